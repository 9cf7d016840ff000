"""Hold expiry: gives expired holds back to sale, for every open or paused event; also runs the
scheduled sale openings and closings (gateway/organisers/schedule.py) once a second and the
recovery of interrupted checkouts every 5 s.

Runs `expire` (bounded batches) for each active event every 200 ms, up to SWEEP_CONCURRENCY events at
once, so expired inventory is back on sale within a second of expiry even when no buyer touches those
seats (holds also reclaim the expired holds they meet). The three jobs run side by side: a slow
recovery pass or a slow Postgres never delays the sweep.
"""

from __future__ import annotations

import asyncio
import logging

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
SWEEP_CONCURRENCY = 32  # events swept at once (the Redis pool has 64 connections per process)


async def sweep_once(runtime: Runtime) -> int:
    prefix = runtime.settings.redis_prefix
    events = [int(raw) for raw in await runtime.redis.smembers(on_sale_set(prefix))]

    async def one(event_id: int) -> int:
        total = 0
        while True:
            result = await inventory.expire(scripts=runtime.scripts, prefix=prefix, event_id=event_id,
                                            max_holds=BATCH)
            total += result["expired"]
            if not result["remaining_due"]:
                return total

    total = 0
    for i in range(0, len(events), SWEEP_CONCURRENCY):
        total += sum(await asyncio.gather(*(one(e) for e in events[i:i + SWEEP_CONCURRENCY])))
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
    async def sweep() -> None:
        n = await sweep_once(runtime)
        if n:
            log.info("expired holds", extra={"count": n})

    async def recover() -> None:
        refunded = await recover_once(runtime, recovery)
        if refunded:
            log.warning("refunded interrupted checkouts", extra={"count": refunded})

    async def scheduled() -> None:  # Postgres away stops only this job, never the hold sweep
        await schedule.run_due(runtime)

    await asyncio.gather(every(INTERVAL_S, stop, sweep, log=log, what="expiry sweep"),
                         every(RECOVER_EVERY_S, stop, recover, log=log, what="checkout recovery"),
                         every(SCHEDULE_EVERY_S, stop, scheduled, log=log, what="scheduled sales"))
