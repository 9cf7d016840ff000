"""Bulkhead: a bounded number of concurrent calls to one provider, per process.

A slow provider then holds at most `max_concurrency` tasks; the next caller waits
at most `acquire_timeout_s` for a slot and is refused (`BulkheadFull`) instead of
queueing behind it, so the rest of the gateway keeps its tasks and connections.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class BulkheadFull(Exception):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"bulkhead {name!r} is full ({limit} calls in flight)")
        self.name = name
        self.limit = limit


class Bulkhead:
    """`async with bulkhead:` holds one slot for the duration of the block."""

    def __init__(self, name: str, max_concurrency: int, acquire_timeout_s: float = 0.05) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.name = name
        self.max_concurrency = max_concurrency
        self.acquire_timeout_s = acquire_timeout_s
        self._sem = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.refused = 0

    async def __aenter__(self) -> "Bulkhead":
        if self._sem.locked():
            try:
                await asyncio.wait_for(self._sem.acquire(), self.acquire_timeout_s)
            except TimeoutError:
                self.refused += 1
                raise BulkheadFull(self.name, self.max_concurrency) from None
        else:
            await self._sem.acquire()
        self.in_flight += 1
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.in_flight -= 1
        self._sem.release()
