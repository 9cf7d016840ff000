"""Single-flight loading: concurrent callers asking for the same missing key share
one load (used for per-worker caches that a first request fills: snapshots, queue
views). A load that fails is not cached; the next caller tries again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self, load: Callable[[K], Awaitable[V]]) -> None:
        self._load = load
        self._pending: dict[K, asyncio.Future[V]] = {}

    def loading(self, key: K) -> bool:
        return key in self._pending

    async def __call__(self, key: K) -> V:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: a caller that gives up (client gone) does not cancel the others' load.
        return await asyncio.shield(pending)
