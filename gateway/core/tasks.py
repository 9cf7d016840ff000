"""Stopping a background loop for sure.

redis-py can swallow a cancellation that lands inside a command (the connection's own cleanup
catches it), and the loop then carries on as if nothing happened: `task.cancel(); await task`
waits forever. `stop_task` lets the loop finish by itself for `grace_s` (when it watches a stop
event), then cancels it again and again, each time with a bounded wait, until it has ended.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task | None, *, grace_s: float = 0.0, name: str = "background loop") -> None:
    if task is None:
        return
    if grace_s > 0:
        await asyncio.wait({task}, timeout=grace_s)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with an error", name, extra={"error": repr(task.exception())})
