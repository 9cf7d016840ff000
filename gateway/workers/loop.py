"""The loop of a periodic background worker: one step every interval until stopped.

A failing step (Redis or Postgres away) is logged once, when it starts failing,
and tried again next interval; the worker never exits because of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]], *,
                log: logging.Logger, what: str) -> None:
    failing = False
    while not stop.is_set():
        try:
            await step()
            if failing:
                log.info(f"{what} works again")
            failing = False
        except Exception as exc:  # keep trying, log once
            if not failing:
                log.warning(f"{what} failed", extra={"error": repr(exc)})
            failing = True
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
