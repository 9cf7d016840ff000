"""A small Server-Sent Events reader for tests (httpx streaming response -> events)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    id: str | None
    data: Any


class SSEReader:
    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> Event:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event:
        name, ident, data = "message", None, []
        async for line in self.lines:
            if line == "":
                if data:
                    return Event(name, ident, json.loads("\n".join(data)))
                name, ident = "message", None
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)
        raise EOFError("stream ended")

    async def until(self, predicate, timeout: float = 5.0) -> Event:
        """The first event for which `predicate(event)` is true."""
        async def scan() -> Event:
            while True:
                ev = await self._next()
                if predicate(ev):
                    return ev
        return await asyncio.wait_for(scan(), timeout)


def apply(states: list[str], changes: list[list[Any]]) -> None:
    """What the dashboard does with a `seats` event (op 1 hold, 2 release, 3 sell, 4 void, 5 expire)."""
    for op, seats in changes:
        for i in seats:
            states[i] = {1: "1", 2: "0", 3: "2", 4: "0", 5: "0"}[op]
