"""Hold expiry: gives expired holds back to sale, for every open or paused event.

Runs `expire` (bounded batches) for each active event every 200 ms, so expired
inventory is back on sale within a second of expiry even when no buyer touches
those seats (holds also reclaim the expired holds they meet).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.core.runtime import Runtime
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


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    scripts = Scripts(runtime.redis)
    failing = False
    while not stop.is_set():
        try:
            n = await sweep_once(runtime, scripts)
            if n:
                log.info("expired holds", extra={"count": n})
            failing = False
        except Exception as exc:  # Redis away: keep trying, log once
            if not failing:
                log.warning("expiry sweep failed", extra={"error": repr(exc)})
            failing = True
        try:
            await asyncio.wait_for(stop.wait(), INTERVAL_S)
        except asyncio.TimeoutError:
            pass
