"""Background workers, run by `flashgate worker NAME` (and all of them by `flashgate up`).

Each worker is an async function `(runtime, stop) -> None` that returns when
`stop` is set.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable

from gateway.core.runtime import Runtime

WorkerFn = Callable[[Runtime, asyncio.Event], Awaitable[None]]

# name -> "module:function"; imported on demand so one worker's imports do not slow another.
WORKERS: dict[str, str] = {
    "expiry": "gateway.workers.expiry:run",
    "admission": "gateway.workers.admission:run",
    "ledger": "gateway.workers.ledger:run",
    "notify": "gateway.workers.notify_worker:run",
}


def load(name: str) -> WorkerFn:
    module, _, func = WORKERS[name].partition(":")
    return getattr(importlib.import_module(module), func)
