"""Hold expiry: gives expired holds back to sale, for every open or paused event.

Runs `expire` (bounded batches) for each active event every 200 ms, so expired
inventory is back on sale within a second of expiry even when no buyer touches
those seats (holds also reclaim the expired holds they meet).
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.core.runtime import Runtime
from gateway.providers.payments import build_payment_provider
from gateway.services.checkout import Checkout
from gateway.services import inventory
from gateway.store.keys import on_sale_set
from gateway.store.scripts import Scripts

log = logging.getLogger("flashgate.expiry")
INTERVAL_S = 0.2
BATCH = 500


async def sweep_once(runtime: Runtime, scripts: Scripts) -> int:
    prefix = runtime.settings.redis_prefix
    total = 0
    for raw in await runtime.redis.smembers(on_sale_set(prefix)):
        event_id = int(raw)
        while True:
            result = await inventory.expire(scripts=scripts, prefix=prefix, event_id=event_id, max_holds=BATCH)
            total += result["expired"]
            if not result["remaining_due"]:
                break
    return total


RECOVER_EVERY_S = 5.0


async def recover_once(runtime: Runtime, checkout: Checkout) -> int:
    total = 0
    for raw in await runtime.redis.smembers(on_sale_set(runtime.settings.redis_prefix)):
        total += await checkout.recover(int(raw))
    return total


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    scripts = Scripts(runtime.redis)
    # Also refunds payments of checkouts that died between payment and confirm (see Checkout.recover).
    payments = build_payment_provider(runtime)
    checkout = Checkout(redis=runtime.redis, scripts=scripts, snapshots=None, provider=payments,
                        signer=None, prefix=runtime.settings.redis_prefix)
    last_recover = 0.0
    failing = False
    try:
        await _loop(runtime, stop, scripts, checkout, last_recover, failing)
    finally:
        await payments.aclose()


async def _loop(runtime: Runtime, stop: asyncio.Event, scripts: Scripts, checkout: Checkout, last_recover: float,
                failing: bool) -> None:
    while not stop.is_set():
        try:
            n = await sweep_once(runtime, scripts)
            if n:
                log.info("expired holds", extra={"count": n})
            if time.monotonic() - last_recover > RECOVER_EVERY_S:
                last_recover = time.monotonic()
                refunded = await recover_once(runtime, checkout)
                if refunded:
                    log.warning("refunded interrupted checkouts", extra={"count": refunded})
            failing = False
        except Exception as exc:  # Redis away: keep trying, log once
            if not failing:
                log.warning("expiry sweep failed", extra={"error": repr(exc)})
            failing = True
        try:
            await asyncio.wait_for(stop.wait(), INTERVAL_S)
        except asyncio.TimeoutError:
            pass
