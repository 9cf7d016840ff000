"""Hold expiry: gives expired holds back to sale, for every open or paused event; also runs the
scheduled sale openings and closings (gateway/organisers/schedule.py) once a second.

Runs `expire` (bounded batches) for each active event every 200 ms, so expired
inventory is back on sale within a second of expiry even when no buyer touches
those seats (holds also reclaim the expired holds they meet).
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.core.runtime import Runtime
from gateway.organisers import schedule
from gateway.sale import inventory
from gateway.sale.checkout import CheckoutRecovery
from gateway.store.keys import on_sale_set
from gateway.wiring import build_recovery
from gateway.workers.loop import every

log = logging.getLogger("flashgate.expiry")
INTERVAL_S = 0.2
BATCH = 500


async def sweep_once(runtime: Runtime) -> int:
    prefix = runtime.settings.redis_prefix
    total = 0
    for raw in await runtime.redis.smembers(on_sale_set(prefix)):
        event_id = int(raw)
        while True:
            result = await inventory.expire(scripts=runtime.scripts, prefix=prefix, event_id=event_id, max_holds=BATCH)
            total += result["expired"]
            if not result["remaining_due"]:
                break
    return total


RECOVER_EVERY_S = 5.0
SCHEDULE_EVERY_S = 1.0  # scheduled sale openings and closings happen within about this long of their time


async def recover_once(runtime: Runtime, checkout: CheckoutRecovery) -> int:
    total = 0
    for raw in await runtime.redis.smembers(on_sale_set(runtime.settings.redis_prefix)):
        total += await checkout.recover(int(raw))
    return total


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    # Also refunds payments of checkouts that died between payment and confirm (see CheckoutRecovery).
    recovery, payments = build_recovery(runtime)
    try:
        await _loop(runtime, stop, recovery)
    finally:
        await payments.aclose()


async def _loop(runtime: Runtime, stop: asyncio.Event, recovery: CheckoutRecovery) -> None:
    last_recover = last_schedule = 0.0
    schedule_failing = False

    async def step() -> None:
        nonlocal last_recover, last_schedule, schedule_failing
        n = await sweep_once(runtime)
        if n:
            log.info("expired holds", extra={"count": n})
        if time.monotonic() - last_recover > RECOVER_EVERY_S:
            last_recover = time.monotonic()
            refunded = await recover_once(runtime, recovery)
            if refunded:
                log.warning("refunded interrupted checkouts", extra={"count": refunded})
        if time.monotonic() - last_schedule > SCHEDULE_EVERY_S:
            last_schedule = time.monotonic()
            try:  # Postgres away must not stop the hold sweep
                await schedule.run_due(runtime)
                schedule_failing = False
            except Exception as exc:
                if not schedule_failing:
                    log.warning("scheduled sales failed", extra={"error": repr(exc)})
                schedule_failing = True

    await every(INTERVAL_S, stop, step, log=log, what="expiry sweep")
