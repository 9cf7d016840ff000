"""A pybreaker circuit breaker whose state lives in Redis, used from asyncio, right across processes.

pybreaker's state machine is synchronous: it reads and writes its storage inline.
Its own `CircuitRedisStorage` would block the event loop on every call, so the
storage here is a local mirror of one Redis hash:

- reads (state, failure count, opened-at) are served from the mirror;
- writes change the mirror at once and are queued, compacted (last state wins, counter
  increments summed): at most one state transition and one operation per counter;
- `sync()` sends the queued writes and re-reads the hash in ONE round trip (a Lua script when
  there are writes, HGETALL otherwise), at most every `refresh_s` (100 ms) before a call, and
  after any call that queued writes.

Rules that keep it right across processes (docs/providers.md, "Shared circuit breaker"):

1. Queued writes survive a Redis outage: a failed sync puts them back (still compacted, so
   bounded) and a background flush retries every `redis_backoff_s` until Redis answers.
   Meanwhile each process keeps a working local breaker.
2. A state transition only replaces an older one: every transition carries `changed_at`
   (wall-clock seconds); the script applies it only if it is not older than the stored
   one, and the mirror never adopts a stored state older than its own (it re-queues its
   own instead, which repairs a Redis that lost or rolled back the hash). So a stale
   "closed" never closes a newer "open".
3. One trial call at a time across processes: when the reset timeout has passed (or the
   state is half-open), a call must first take the trial lease `<key>:trial`
   (SET NX PX `trial_lease_s`); everyone else keeps refusing until the trial's result is
   written (the lease is released after the result reached Redis, or expires if its
   holder died). With Redis down, the trial is per process.

Costs: one hash per breaker (`<prefix>:breaker:<name>`: state, changed_at, opened_at, fail,
success, version), no expiry; failure counts are summed across processes with HINCRBY.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pybreaker
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.tasks import stop_task

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN

# Apply one compacted batch of writes, then return the hash.
# KEYS[1] the hash; ARGV: has_transition, state, changed_at, opened_at ('' = none),
# fail op ('' | 'set' | 'incr'), fail value, success op, success value.
_APPLY = """
local key = KEYS[1]
local fresh = true
if ARGV[1] == '1' then
  local cur = tonumber(redis.call('HGET', key, 'changed_at') or '0') or 0
  if tonumber(ARGV[3]) >= cur then
    redis.call('HSET', key, 'state', ARGV[2], 'changed_at', ARGV[3])
    if ARGV[4] ~= '' then redis.call('HSET', key, 'opened_at', ARGV[4]) end
    redis.call('HINCRBY', key, 'version', 1)
  else
    fresh = false
  end
end
local function apply(field, op, value)
  if op == 'set' then
    if fresh then redis.call('HSET', key, field, value) end
  elseif op == 'incr' then
    redis.call('HINCRBY', key, field, value)
  end
end
apply('fail', ARGV[5], ARGV[6])
apply('success', ARGV[7], ARGV[8])
return redis.call('HGETALL', key)
"""

# Release the trial lease only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CounterOp = tuple[str, int] | None  # ("set", v) | ("incr", n) | None
Transition = tuple[str, float, float | None]  # (state, changed_at, opened_at)


def _then(first: CounterOp, second: CounterOp) -> CounterOp:
    """The one operation equal to `first` followed by `second`."""
    if second is None:
        return first
    if first is None or second[0] == "set":
        return second
    return (first[0], first[1] + second[1])


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
        self._apply = redis.register_script(_APPLY)
        self._state = STATE_CLOSED
        self._changed_at = 0.0
        self._fail = 0
        self._success = 0
        self._opened_at: float | None = None
        self.version = 0
        # Queued writes, compacted.
        self._p_state: Transition | None = None
        self._p_fail: CounterOp = None
        self._p_success: CounterOp = None
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
        self._changed_at = max(time.time(), self._changed_at)  # never behind what we have seen
        self._p_state = (self._state, self._changed_at, self._opened_at)

    def increment_counter(self) -> None:
        self._fail += 1
        self._p_fail = _then(self._p_fail, ("incr", 1))

    def reset_counter(self) -> None:
        # Every success resets the count: write only when there is something to reset, or the
        # closed breaker's happy path would cost a Redis write per call.
        if self._fail == 0 and self._p_fail is None:
            return
        self._fail = 0
        self._p_fail = ("set", 0)

    def increment_success_counter(self) -> None:
        self._success += 1
        self._p_success = _then(self._p_success, ("incr", 1))

    def reset_success_counter(self) -> None:
        if self._success == 0 and self._p_success is None:
            return
        self._success = 0
        self._p_success = ("set", 0)

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
        # pybreaker sets opened_at, then the state: the transition picks it up.
        self._opened_at = value.timestamp()
        if self._p_state is not None and self._p_state[0] == STATE_OPEN:
            self._p_state = (STATE_OPEN, self._p_state[1], self._opened_at)

    @property
    def opened_at_ts(self) -> float | None:
        return self._opened_at

    @property
    def changed_at(self) -> float:
        """Wall-clock time of the last state transition this process knows of."""
        return self._changed_at

    # -- asynchronous side ---------------------------------------------------------
    def has_pending(self) -> bool:
        return self._p_state is not None or self._p_fail is not None or self._p_success is not None

    def pending_size(self) -> int:
        """Queued operations (bounded: at most 3, whatever happened during an outage)."""
        return sum(op is not None for op in (self._p_state, self._p_fail, self._p_success))

    def redis_down(self) -> bool:
        """Redis failed recently: not retried before `redis_backoff_s` has passed."""
        return time.monotonic() < self._redis_down_until

    def redis_retry_in(self) -> float:
        return max(0.0, self._redis_down_until - time.monotonic())

    def mark_redis_down(self, exc: BaseException) -> None:
        log.warning("breaker %s: Redis unavailable (%s); using local state", self.key, exc)
        self._redis_down_until = time.monotonic() + self.redis_backoff_s

    def stale(self) -> bool:
        return self.has_pending() or time.monotonic() - self._synced_at >= self.refresh_s

    async def sync(self, *, force: bool = False) -> None:
        """Send queued writes and reload the shared state (one round trip). Redis down: keep the
        writes queued, use the local state, and try again after `redis_backoff_s`."""
        if not force and not self.stale():
            return
        if self.redis_down():
            return
        async with self._lock:
            if not force and not self.stale():
                return
            if self.redis_down():
                return
            taken = (self._p_state, self._p_fail, self._p_success)
            self._p_state, self._p_fail, self._p_success = None, None, None
            try:
                if any(op is not None for op in taken):
                    raw = await self._apply(keys=[self.key], args=self._script_args(*taken))
                    data = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
                else:
                    got = await self._redis.hgetall(self.key)
                    data = {k.decode(): v.decode() for k, v in got.items()}
            except BaseException as exc:
                self._requeue(*taken)
                if isinstance(exc, (RedisError, OSError)):
                    self.mark_redis_down(exc)
                    return
                raise
            self._load(data)
            self._synced_at = time.monotonic()

    @staticmethod
    def _script_args(transition: Transition | None, fail: CounterOp, success: CounterOp) -> list[Any]:
        args: list[Any] = ["0", "", "0", ""]
        if transition is not None:
            state, changed_at, opened_at = transition
            args = ["1", state, repr(changed_at), "" if opened_at is None else repr(opened_at)]
        for op in (fail, success):
            args += ["", "0"] if op is None else [op[0], str(op[1])]
        return args

    def _requeue(self, transition: Transition | None, fail: CounterOp, success: CounterOp) -> None:
        """Put writes that did not reach Redis back in front of those queued since."""
        if self._p_state is None:
            self._p_state = transition
        self._p_fail = _then(fail, self._p_fail)
        self._p_success = _then(success, self._p_success)

    def _load(self, data: dict[str, str]) -> None:
        opened = data.get("opened_at")
        shared_opened = float(opened) if opened else None
        shared_changed = float(data.get("changed_at") or (opened if data.get("state") == STATE_OPEN and opened
                                                           else 0) or 0)
        self.version = int(data.get("version", 0) or 0)
        if self._p_state is not None:
            pass  # a transition made during the round trip: newer than anything read
        elif shared_changed >= self._changed_at:
            self._state = data.get("state", STATE_CLOSED)
            self._changed_at = shared_changed
            self._opened_at = shared_opened
        else:
            # Redis holds an older state than ours (lost, rolled back, or a stale writer): keep ours
            # and write it back.
            log.warning("breaker %s: Redis state older than local %s; restoring it", self.key, self._state)
            self._p_state = (self._state, self._changed_at, self._opened_at)
        fail = int(data.get("fail", 0) or 0)
        success = int(data.get("success", 0) or 0)
        self._fail = fail if self._p_fail is None else (
            self._p_fail[1] if self._p_fail[0] == "set" else fail + self._p_fail[1])
        self._success = success if self._p_success is None else (
            self._p_success[1] if self._p_success[0] == "set" else success + self._p_success[1])


class _Narrator(pybreaker.CircuitBreakerListener):
    """Logs every state change this process makes, with the fault that tripped it (on-call engineers
    read the log to tell a provider outage from the gateway's own trouble)."""

    def __init__(self) -> None:
        self.last_fault = ""

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.last_fault = str(exc) or type(exc).__name__

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old_name = getattr(old_state, "name", old_state)
        new_name = getattr(new_state, "name", new_state)
        if new_name == "open":
            log.warning("breaker %s opened (last fault: %s)", cb.name, self.last_fault)
        else:
            log.info("breaker %s: %s -> %s", cb.name, old_name, new_name)


class SharedBreaker:
    """A named pybreaker.CircuitBreaker over `SharedStorage`, with an async `call`.

    `exclude` lists exceptions (types, or predicates taking the exception) that are answers,
    not faults (a declined card, a 429): they do not count as failures (pybreaker counts them as
    successes: the provider answered). A cancelled call is not counted either, except a trial
    call, which then counts as failed (a trial without a result must not close the breaker).
    """

    def __init__(self, name: str, *, redis: aioredis.Redis, key: str, fail_max: int = 5,
                 reset_timeout_s: float = 10.0, exclude: tuple[Any, ...] = (),
                 refresh_s: float = 0.1, redis_backoff_s: float = 2.0, trial_lease_s: float = 5.0) -> None:
        self.name = name
        self._redis = redis
        self.storage = SharedStorage(redis, key, refresh_s=refresh_s, redis_backoff_s=redis_backoff_s)
        self.trial_key = f"{key}:trial"
        self.trial_lease_s = trial_lease_s
        self._release_trial = redis.register_script(_RELEASE)
        self._trial_task: asyncio.Task[Any] | None = None
        self._lease_busy_until = -math.inf  # another process's trial holds the lease (cached refusal)
        self.trials = 0  # trial calls this process made

        def cancelled_outside_trial(exc: BaseException) -> bool:
            return isinstance(exc, asyncio.CancelledError) and not self._in_trial()

        excluded: list[Any] = [*exclude, cancelled_outside_trial]
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout_s, exclude=excluded,
                                            state_storage=self.storage, name=name, listeners=[_Narrator()])
        self._flush_task: asyncio.Task[None] | None = None

    def add_exclusions(self, *items: Any) -> None:
        """More answers that are not faults (exception types or predicates)."""
        for item in items:
            if item not in self._cb.excluded_exceptions:
                self._cb.add_excluded_exception(item)

    @property
    def reset_timeout_s(self) -> float:
        return float(self._cb.reset_timeout)

    @property
    def fail_max(self) -> int:
        return self._cb.fail_max

    def remaining_s(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when one may be tried now)."""
        if self.storage.state != STATE_OPEN:
            return 0.0
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

    def _in_trial(self) -> bool:
        task = self._trial_task
        return task is not None and task is asyncio.current_task()

    def _trial_running(self) -> bool:
        return self._trial_task is not None and not self._trial_task.done()

    def _trial_due(self) -> bool:
        """The next call would be a trial: half-open, or open with the reset timeout passed."""
        state = self.storage.state
        return state == STATE_HALF_OPEN or (state == STATE_OPEN and self.remaining_s() <= 0)

    def is_refusing(self) -> bool:
        """Judged on the mirror, without I/O: open inside the reset timeout, or a trial of this
        process in flight. (A trial elsewhere is found out when the lease is asked for.)"""
        state = self.storage.state
        if state == STATE_OPEN and self.remaining_s() > 0:
            return True
        return self._trial_due() and (self._trial_running() or time.monotonic() < self._lease_busy_until)

    async def check(self) -> None:
        """Raise BreakerOpen without calling anything when the breaker refuses calls."""
        await self.storage.sync()
        if self.is_refusing():
            raise self._open_error()

    async def _begin_trial(self) -> str | None:
        """Take the trial lease (one trial across processes) or raise BreakerOpen."""
        if self._trial_running() or time.monotonic() < self._lease_busy_until:
            raise self._open_error()
        token = secrets.token_hex(8)
        task = asyncio.current_task()
        if self.storage.redis_down():
            got, token = True, None  # no shared lease without Redis: one trial per process
        else:
            self._trial_task = task  # claims the process's trial while the lease is asked for
            try:
                got = bool(await self._redis.set(self.trial_key, token, nx=True,
                                                 px=max(1, int(self.trial_lease_s * 1000))))
            except (RedisError, OSError) as exc:
                self.storage.mark_redis_down(exc)
                got, token = True, None
            except BaseException:
                self._trial_task = None
                raise
            if not got:
                self._trial_task = None
                # Refuse without I/O for a mirror refresh, then ask again (the trial may be over).
                self._lease_busy_until = time.monotonic() + self.storage.refresh_s
                raise self._open_error()
        self._trial_task = task
        self.trials += 1
        return token

    async def _end_trial(self, token: str | None) -> None:
        """Write the trial's result to Redis, then let the next trial be taken."""
        try:
            await self.storage.sync(force=True)
            if token is not None and not self.storage.redis_down():
                await self._release_trial(keys=[self.trial_key], args=[token])
        except (RedisError, OSError) as exc:
            self.storage.mark_redis_down(exc)  # the lease expires by itself
        finally:
            self._trial_task = None
            if self.storage.has_pending():
                self._flush_soon()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` under the breaker: BreakerOpen if refused or if this failure trips it."""
        await self.storage.sync()
        trial = False
        token: str | None = None
        if self._trial_due():
            token = await self._begin_trial()
            trial = True
        try:
            with self._cb.calling():
                return await fn()
        except pybreaker.CircuitBreakerError as err:
            if isinstance(err.__context__, asyncio.CancelledError):
                raise err.__context__ from None  # a cancelled trial re-opened it: still a cancellation
            raise self._open_error() from None
        finally:
            if trial:
                await self._end_trial(token)
            elif self.storage.has_pending():
                self._flush_soon()

    def _flush_soon(self) -> None:
        """Send this call's state change to Redis in the background: one flush at a time, and the
        caller does not wait for it (a state change must reach the other processes quickly, but a
        payment answer must not queue behind Redis writes). While Redis is down it keeps trying."""
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self.storage.has_pending():
            wait = self.storage.redis_retry_in()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.storage.sync(force=True)

    async def aclose(self) -> None:
        """Stop the background flush (shutdown)."""
        task, self._flush_task = self._flush_task, None
        if task is not None and not task.done():
            await stop_task(task, name="breaker flush")  # a cancel inside redis-py may be swallowed

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
            "opened_at": float(data["opened_at"]) if data.get("opened_at") else None,
            "changed_at": float(data["changed_at"]) if data.get("changed_at") else None,
            "version": int(data.get("version", 0) or 0)}
