"""Organiser reads on a Postgres streaming replica (`DATABASE_REPLICA_URL`; docs/scaling.md, "Postgres").

Reads that tolerate being a moment behind (the orders list, the door figures per gate, the audit's
Postgres half once the replica has caught up) go to the replica; writes and everything read right
after a write stay on the primary. Which pool a read gets is decided per process from a check of the
replica, repeated at most every `database_replica_check_s`:

- the replica answers and its replay lag is at most `database_replica_max_lag_s`: the replica;
- it does not answer, is not in recovery (promoted or misconfigured), or lags more: the primary;
- a read that fails on the replica because it went away meanwhile runs again on the primary, and
  the primary answers these reads until the next check finds the replica healthy again.

Lag, in seconds: 0 when the replica has replayed everything the primary had written when the check
began; otherwise the smaller of two upper bounds: the age of the last transaction it replayed
(`now() - pg_last_xact_replay_timestamp()`, too high right after an idle stretch) and the time since an
earlier check whose primary position the replica has replayed (the check interval's resolution). In
bytes: the primary's `pg_current_wal_insert_lsn()` minus the replica's `pg_last_wal_replay_lsn()`.
With the primary down the replica still serves these reads, its lag measured against what it has
received.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import asyncpg

from gateway.core import metrics
from gateway.core.config import Settings

log = logging.getLogger("flashgate.replica")

T = TypeVar("T")

# A server away, as asyncpg and its pool raise it (the same family as gateway/api/handlers.py's), and
# what a pooled connection says when its server shut down while it was idle ("another operation is in
# progress": the server's farewell arrived unasked).
SERVER_AWAY: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.InternalClientError)
# A query a hot standby cancelled because replay needed what it was reading (rows vacuumed away on the
# primary, a table locked there): "canceling statement due to conflict with recovery", SQLSTATE 40001. The
# primary answers it; the replica stays in use.
RECOVERY_CONFLICT = asyncpg.exceptions.SerializationError

CHECK_TIMEOUT_S = 1.0      # one check of the replica (and of the primary's position) takes at most this
POSITIONS_KEPT = 600       # primary positions remembered (10 min of checks at the default interval)
CATCH_UP_POLL_S = 0.02     # how often `consistent()` looks at the replay position while it waits

_REPLICA_SQL = """SELECT pg_is_in_recovery() AS recovery, pg_last_wal_receive_lsn()::text AS received,
                         pg_last_wal_replay_lsn()::text AS replayed,
                         extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay"""


def lsn(text: str | None) -> int | None:
    """A `pg_lsn` in its text form (`16/B374D848`) as a byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One check of the replica."""

    up: bool
    lag_s: float | None = None       # None: unknown (down, or nothing replayed yet while behind)
    lag_bytes: int | None = None     # None: the primary did not answer (or the replica is down)
    usable: bool = False             # reads go to the replica
    reason: str = ""                 # why not, when not usable
    checked_at: float = 0.0          # time.time() of the check

    def view(self) -> dict[str, Any]:
        """As organisers and operators see it (`/readyz`, the orders list)."""
        lag = None if self.lag_s is None else round(self.lag_s, 3)
        return {"source": "replica" if self.usable else "primary", "replica_up": self.up, "lag_s": lag,
                "lag_bytes": self.lag_bytes, **({"reason": self.reason} if self.reason else {})}


def read_from(state: ReplicaState | None) -> dict[str, Any]:
    """Where a read ran, for its answer: `{"source": "primary"}` without a replica."""
    return {"source": "primary"} if state is None else state.view()


class ReplicaReads:
    """Chooses the pool of lag-tolerant reads (one per process, held by the `Runtime`)."""

    def __init__(self, settings: Settings, primary: Callable[[], Awaitable[asyncpg.Pool]]) -> None:
        self.url = settings.database_replica_url
        self.max_lag_s = settings.database_replica_max_lag_s
        self.check_s = settings.database_replica_check_s
        self.pool_size = settings.pg_pool_size
        self._primary = primary
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._state: ReplicaState | None = None
        self._checked = -float("inf")  # time.monotonic() of the last check
        self._checking: asyncio.Future[ReplicaState] | None = None
        # The primary's WAL position at recent checks (monotonic time, position): bounds the lag from above
        # when the last replayed transaction is old (the first writes after an idle stretch).
        self._positions: deque[tuple[float, int]] = deque(maxlen=POSITIONS_KEPT)

    @property
    def configured(self) -> bool:
        return bool(self.url)

    @property
    def last(self) -> ReplicaState | None:
        """The last check, without checking again."""
        return self._state

    async def replica_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=self.pool_size,
                                                           timeout=CHECK_TIMEOUT_S, command_timeout=10.0)
        return self._pool

    async def primary(self) -> asyncpg.Pool:
        return await self._primary()

    # -- checks -----------------------------------------------------------------------------------------
    async def measure(self) -> ReplicaState:
        """Check the replica now: is it up, in recovery, how far behind the primary."""
        primary_lsn: int | None = None
        asked = time.monotonic()
        try:  # first the primary's position, so that "replayed at least this" means caught up
            primary = await self._primary()
            async with primary.acquire(timeout=CHECK_TIMEOUT_S) as conn:
                primary_lsn = lsn(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text",
                                                      timeout=CHECK_TIMEOUT_S))
        except Exception:  # the primary is away (or is itself a standby): measured against what was received
            primary_lsn = None
        now = time.time()
        try:
            pool = await self.replica_pool()
            async with pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
                row = await conn.fetchrow(_REPLICA_SQL, timeout=CHECK_TIMEOUT_S)
        except Exception as exc:
            return ReplicaState(up=False, reason=f"replica unreachable: {type(exc).__name__}", checked_at=now)
        if not row["recovery"]:
            return ReplicaState(up=True, reason="not a standby (pg_is_in_recovery() is false)", checked_at=now)
        replayed = lsn(row["replayed"])
        target = primary_lsn if primary_lsn is not None else lsn(row["received"])
        if replayed is None:
            return ReplicaState(up=True, reason="replay position unknown", checked_at=now)
        if target is None or replayed >= target:
            lag_s: float | None = 0.0
        else:
            lag_s = None if row["since_replay"] is None else max(0.0, float(row["since_replay"]))
            # Everything the primary had at an earlier check is replayed: behind by at most the time since.
            caught = next((t for t, position in reversed(self._positions) if position <= replayed), None)
            if caught is not None:
                lag_s = min(lag_s, asked - caught) if lag_s is not None else asked - caught
        if primary_lsn is not None:
            self._positions.append((asked, primary_lsn))
        lag_bytes = None if primary_lsn is None else max(0, primary_lsn - replayed)
        if lag_s is None:
            return ReplicaState(up=True, lag_bytes=lag_bytes, reason="behind, lag unknown", checked_at=now)
        if lag_s > self.max_lag_s:
            return ReplicaState(up=True, lag_s=lag_s, lag_bytes=lag_bytes, checked_at=now,
                                reason=f"lag {lag_s:.1f} s > {self.max_lag_s:g} s")
        return ReplicaState(up=True, lag_s=lag_s, lag_bytes=lag_bytes, usable=True, checked_at=now)

    async def state(self, *, fresh: bool = False) -> ReplicaState:
        """The replica's state, checked again when the last check is older than `check_s` (one check at a
        time per process: concurrent readers share it)."""
        if not fresh and self._state is not None and time.monotonic() - self._checked < self.check_s:
            return self._state
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
            self._checking.add_done_callback(lambda _: setattr(self, "_checking", None))
        return await asyncio.shield(self._checking)

    async def _check(self) -> ReplicaState:
        state = await self.measure()
        previous, self._state, self._checked = self._state, state, time.monotonic()
        if previous is None or previous.usable != state.usable:
            log.info("organiser reads go to the %s", "replica" if state.usable else "primary",
                     extra={"reason": state.reason, "lag_s": state.lag_s})
        return state

    def _away(self, exc: BaseException) -> None:
        """The replica failed a read: primary until the next check says otherwise."""
        self._state = ReplicaState(up=False, reason=f"replica unreachable: {type(exc).__name__}",
                                   checked_at=time.time())
        self._checked = time.monotonic()
        log.warning("read failed on the replica; the primary answers", extra={"error": repr(exc)})

    # -- reads ------------------------------------------------------------------------------------------
    async def pool(self) -> tuple[asyncpg.Pool, ReplicaState | None]:
        """The pool a lag-tolerant read should use now, and the replica's state (None: no replica)."""
        if not self.url:
            return await self._primary(), None
        state = await self.state()
        return (await self.replica_pool() if state.usable else await self._primary()), state

    async def run(self, read: Callable[[asyncpg.Pool], Awaitable[T]]) -> tuple[T, ReplicaState | None]:
        """`read(pool)` on the replica when it is usable, else (or when the replica fails it) on the
        primary; returns its answer and the state the choice was made on."""
        pool, state = await self.pool()
        if state is None or not state.usable:
            metrics.count_pg_read("primary" if state is None else "primary_fallback")
            return await read(pool), state
        try:
            answer = await read(pool)
        except (*SERVER_AWAY, RECOVERY_CONFLICT) as exc:
            if isinstance(exc, RECOVERY_CONFLICT):
                state = replace(state, usable=False, reason="cancelled on the replica (conflict with recovery)")
            else:
                self._away(exc)
                state = self._state
            metrics.count_pg_read("primary_fallback")
            return await read(await self._primary()), state
        metrics.count_pg_read("replica")
        return answer, state

    async def consistent(self, *, wait_s: float = 1.0) -> tuple[asyncpg.Pool, str]:
        """A pool that has everything the primary had written when this was called (read-your-writes): the
        replica once it has replayed up to the primary's position (waiting at most `wait_s`), else the
        primary. Returns the pool and `"replica"` or `"primary"`."""
        primary = await self._primary()
        if not self.url:
            return primary, "primary"
        state = await self.state()
        if not state.usable:
            return primary, "primary"
        target = lsn(await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text",
                                            timeout=CHECK_TIMEOUT_S))
        try:
            replica = await self.replica_pool()
            deadline = time.monotonic() + wait_s
            while True:
                replayed = lsn(await replica.fetchval("SELECT pg_last_wal_replay_lsn()::text",
                                                      timeout=CHECK_TIMEOUT_S))
                if replayed is not None and target is not None and replayed >= target:
                    return replica, "replica"
                if time.monotonic() >= deadline:
                    return primary, "primary"
                await asyncio.sleep(CATCH_UP_POLL_S)
        except SERVER_AWAY as exc:
            self._away(exc)
            return primary, "primary"

    async def close(self) -> None:
        if self._checking is not None:
            await asyncio.gather(self._checking, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
