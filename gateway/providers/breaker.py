"""A pybreaker circuit breaker whose state lives in Redis, used from asyncio.

pybreaker's state machine is synchronous: it reads and writes its storage inline.
Its own `CircuitRedisStorage` would block the event loop on every call, so the
storage here is a local mirror of one Redis hash:

- reads (state, failure count, opened-at) are served from the mirror;
- writes change the mirror at once and are queued;
- `sync()` sends the queued writes and re-reads the hash in ONE pipeline, at most
  every `refresh_s` (100 ms) before a call, and after any call that queued writes.

So every process sees a breaker opened by another within `refresh_s`, the hot path
costs at most one Redis round trip per 100 ms per process, and Redis being down
leaves each process with its own (still working) local breaker.

Costs: one hash per breaker (`<prefix>:breaker:<name>`: state, fail, success,
opened_at), no expiry; failure counts are summed across processes with HINCRBY.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pybreaker
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN


class BreakerOpen(Exception):
    """The breaker refused the call; `retry_after` is the rest of the reset timeout in whole seconds."""

    def __init__(self, name: str, retry_after: int, remaining_s: float | None = None) -> None:
        super().__init__(f"circuit breaker {name!r} is open")
        self.name = name
        self.retry_after = retry_after
        self.remaining_s = float(retry_after) if remaining_s is None else remaining_s


class SharedStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage mirrored from a Redis hash; see the module docstring."""

    def __init__(self, redis: aioredis.Redis, key: str, *, refresh_s: float = 0.1,
                 redis_backoff_s: float = 2.0) -> None:
        super().__init__("shared-redis")
        self._redis = redis
        self.key = key
        self.refresh_s = refresh_s
        self.redis_backoff_s = redis_backoff_s
        self._state = STATE_CLOSED
        self._fail = 0
        self._success = 0
        self._opened_at: float | None = None
        self._pending: list[tuple[str, Any]] = []
        self._synced_at = -math.inf
        self._redis_down_until = -math.inf
        self._lock = asyncio.Lock()

    # -- pybreaker's synchronous interface: the mirror ---------------------------
    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = str(state)
        self._pending.append(("hset", ("state", self._state)))

    def increment_counter(self) -> None:
        self._fail += 1
        self._pending.append(("hincrby", ("fail", 1)))

    def reset_counter(self) -> None:
        # Every success resets the count: write only when there is something to reset, or the
        # closed breaker's happy path would cost a Redis write per call.
        if self._fail == 0 and not any(op[1][0] == "fail" for op in self._pending):
            return
        self._fail = 0
        self._pending.append(("hset", ("fail", 0)))

    def increment_success_counter(self) -> None:
        self._success += 1
        self._pending.append(("hincrby", ("success", 1)))

    def reset_success_counter(self) -> None:
        if self._success == 0 and not any(op[1][0] == "success" for op in self._pending):
            return
        self._success = 0
        self._pending.append(("hset", ("success", 0)))

    @property
    def counter(self) -> int:
        return self._fail

    @property
    def success_counter(self) -> int:
        return self._success

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_at is None:
            return None
        return datetime.fromtimestamp(self._opened_at, UTC)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_at = value.timestamp()
        self._pending.append(("hset", ("opened_at", repr(self._opened_at))))

    @property
    def opened_at_ts(self) -> float | None:
        return self._opened_at

    # -- asynchronous side ---------------------------------------------------------
    def has_pending(self) -> bool:
        return bool(self._pending)

    def stale(self) -> bool:
        return bool(self._pending) or time.monotonic() - self._synced_at >= self.refresh_s

    async def sync(self, *, force: bool = False) -> None:
        """Send queued writes and reload the shared state (one pipeline)."""
        if not force and not self.stale():
            return
        if time.monotonic() < self._redis_down_until:
            self._pending.clear()
            return
        async with self._lock:
            if not force and not self.stale():
                return
            ops, self._pending = self._pending, []
            pipe = self._redis.pipeline(transaction=False)
            for op, args in ops:
                getattr(pipe, op)(self.key, *args)
            pipe.hgetall(self.key)
            try:
                results = await pipe.execute()
            except (RedisError, OSError) as exc:
                # Keep the local breaker working; do not retry Redis on every call.
                log.warning("breaker %s: Redis unavailable (%s); using local state", self.key, exc)
                self._redis_down_until = time.monotonic() + self.redis_backoff_s
                return
            self._load(results[-1])
            self._synced_at = time.monotonic()

    def _load(self, raw: dict[bytes, bytes]) -> None:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        self._state = data.get("state", STATE_CLOSED)
        self._fail = int(data.get("fail", 0) or 0)
        self._success = int(data.get("success", 0) or 0)
        opened = data.get("opened_at")
        self._opened_at = float(opened) if opened else None


class SharedBreaker:
    """A named pybreaker.CircuitBreaker over `SharedStorage`, with an async `call`.

    `exclude` lists exceptions that are answers, not faults (a declined card): they
    do not count as failures (pybreaker counts them as successes: the provider answered).
    """

    def __init__(self, name: str, *, redis: aioredis.Redis, key: str, fail_max: int = 5,
                 reset_timeout_s: float = 10.0, exclude: tuple[type[BaseException], ...] = (),
                 refresh_s: float = 0.1) -> None:
        self.name = name
        self.storage = SharedStorage(redis, key, refresh_s=refresh_s)
        # A cancelled call (client gone, shutdown) says nothing about the provider.
        excluded: list[Any] = [*exclude, asyncio.CancelledError]
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout_s, exclude=excluded,
                                            state_storage=self.storage, name=name)
        self._flush_task: asyncio.Task | None = None

    @property
    def reset_timeout_s(self) -> float:
        return float(self._cb.reset_timeout)

    @property
    def fail_max(self) -> int:
        return self._cb.fail_max

    def remaining_s(self) -> float:
        """Seconds until an open breaker lets a trial call through."""
        opened = self.storage.opened_at_ts
        if opened is None:
            return self.reset_timeout_s
        return max(0.0, opened + self.reset_timeout_s - time.time())

    def retry_after(self) -> int:
        """`remaining_s` in whole seconds, at least 1 (for a Retry-After header)."""
        return max(1, math.ceil(self.remaining_s()))

    def _open_error(self) -> BreakerOpen:
        return BreakerOpen(self.name, self.retry_after(), self.remaining_s())

    @property
    def current_state(self) -> str:
        """`closed`, `open` or `half-open`, as this process last saw the shared state."""
        return str(self._cb.current_state)

    def is_refusing(self) -> bool:
        """Open and still inside the reset timeout (judged on the mirror, without I/O)."""
        if self.storage.state != STATE_OPEN:
            return False
        opened = self.storage.opened_at_ts
        return opened is None or time.time() < opened + self.reset_timeout_s

    async def check(self) -> None:
        """Raise BreakerOpen without calling anything when the breaker refuses calls."""
        await self.storage.sync()
        if self.is_refusing():
            raise self._open_error()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` under the breaker: BreakerOpen if refused or if this failure trips it."""
        await self.storage.sync()
        try:
            with self._cb.calling():
                return await fn()
        except pybreaker.CircuitBreakerError:
            raise self._open_error() from None
        finally:
            if self.storage.has_pending():
                self._flush_soon()

    def _flush_soon(self) -> None:
        """Send this call's state change to Redis in the background: one flush at a time, and the
        caller does not wait for it (a state change must reach the other processes quickly, but a
        payment answer must not queue behind Redis writes)."""
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self.storage.has_pending():
            await self.storage.sync(force=True)
            if self.storage.has_pending() and time.monotonic() < self.storage._redis_down_until:
                return

    async def snapshot(self) -> dict[str, Any]:
        """State for dashboards and /readyz: name, state, failures, retry_after when open."""
        await self.storage.sync()
        out: dict[str, Any] = {"name": self.name, "state": self.storage.state, "failures": self.storage.counter}
        if self.storage.state == STATE_OPEN:
            out["retry_after"] = self.retry_after()
        return out

    async def reset(self) -> None:
        """Close the breaker everywhere (operator action, tests)."""
        self._cb.close()
        self.storage.reset_counter()
        await self.storage.sync(force=True)


async def read_breaker_state(redis: aioredis.Redis, key: str) -> dict[str, Any]:
    """The stored state of any breaker, for stats pages that hold no breaker object."""
    raw = await redis.hgetall(key)
    data = {k.decode(): v.decode() for k, v in raw.items()}
    return {"state": data.get("state", STATE_CLOSED), "failures": int(data.get("fail", 0) or 0),
            "opened_at": float(data["opened_at"]) if data.get("opened_at") else None}
