"""The shared breaker right across processes: writes queued during a Redis outage, stale shared
state, and one trial call at a time. "Processes" are SharedBreaker instances with their own Redis
clients (each has its own mirror, exactly like a worker process); Redis is real, and a private
redis-server where it must go away and come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.providers.breaker import BreakerOpen, SharedBreaker, read_breaker_state
from gateway.stack.embedded import RedisServer
from gateway.store.redis import redis_client

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom()


async def ok() -> str:
    return "ok"


Factory = Callable[..., SharedBreaker]


@pytest.fixture
async def breakers(breaker_key: str, redis_server_url: str) -> AsyncIterator[Factory]:
    """`breakers(url=…, **kw)`: a breaker on `breaker_key` with a Redis client of its own."""
    made: list[tuple[SharedBreaker, aioredis.Redis]] = []

    def make(url: str = redis_server_url, **kw) -> SharedBreaker:
        client = redis_client(url, timeout_s=0.5)
        kw.setdefault("fail_max", 2)
        kw.setdefault("reset_timeout_s", 30)
        breaker = SharedBreaker("t", redis=client, key=kw.pop("key", breaker_key), **kw)
        made.append((breaker, client))
        return breaker

    yield make
    for breaker, client in made:
        await breaker.aclose()
        await client.aclose()


async def trip(breaker: SharedBreaker) -> None:
    for _ in range(breaker.fail_max):
        with pytest.raises((Boom, BreakerOpen)):
            await breaker.call(fail)
    assert breaker.current_state == "open"


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_state_changes_queued_during_an_outage_reach_redis_after(breakers: Factory, breaker_key: str,
                                                                      tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    try:
        b = breakers(server.url, fail_max=2, redis_backoff_s=0.1)
        await b.reset()  # the hash exists: closed
        server.stop()
        # The provider fails while Redis is away: the local breaker still opens ...
        await trip(b)
        with pytest.raises(BreakerOpen):
            await b.call(ok)
        # ... and the change waits, compacted: many writes while down stay a handful of operations.
        for _ in range(50):
            with pytest.raises(BreakerOpen):
                await b.check()
        assert b.storage.has_pending() and b.storage.pending_size() <= 3
        server = RedisServer(tmp_path / "redis", port=port).start()  # back (empty: no persistence)
        check = redis_client(server.url)
        try:
            async def reached() -> bool:
                return (await read_breaker_state(check, breaker_key))["state"] == "open"

            await wait_for(reached)  # flushed in the background, no further call needed
            state = await read_breaker_state(check, breaker_key)
            assert state["failures"] == 2 and state["opened_at"] == pytest.approx(b.storage.opened_at_ts)
            assert not b.storage.has_pending()
            # Another process now sees it open.
            other = breakers(server.url)
            with pytest.raises(BreakerOpen):
                await other.check()
        finally:
            await check.aclose()
    finally:
        server.stop()


async def test_last_state_wins_after_an_outage(breakers: Factory, breaker_key: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    try:
        b = breakers(server.url, fail_max=2, redis_backoff_s=0.1)
        await b.reset()
        server.stop()
        await trip(b)     # open ...
        await b.reset()   # ... then closed by an operator, both while Redis is down
        server = RedisServer(tmp_path / "redis", port=port).start()
        check = redis_client(server.url)
        try:
            async def reached() -> bool:
                return (await read_breaker_state(check, breaker_key))["changed_at"] is not None

            await asyncio.sleep(0.15)
            await b.check()
            await wait_for(reached)
            state = await read_breaker_state(check, breaker_key)
            assert state["state"] == "closed" and state["failures"] == 0
        finally:
            await check.aclose()
    finally:
        server.stop()


async def test_a_stale_shared_closed_never_closes_a_newer_local_open(breakers: Factory, breaker_key: str,
                                                                     aredis: aioredis.Redis, tmp_path: Path) -> None:
    # 1. Redis rolled back (a restart from an old snapshot, a failover to a lagging replica): the hash
    #    says "closed", older than this process's "open". The process stays open and repairs Redis.
    a = breakers(fail_max=2)
    await trip(a)
    opened = a.storage.opened_at_ts
    await wait_for(lambda: _state_is(aredis, breaker_key, "open"))
    await aredis.hset(breaker_key, mapping={"state": "closed", "changed_at": repr(opened - 60), "fail": 0})
    await asyncio.sleep(0.15)  # A's mirror is due for a refresh: it reads the stale hash
    with pytest.raises(BreakerOpen):
        await a.check()
    with pytest.raises(BreakerOpen):
        await a.call(ok)
    assert a.current_state == "open" and a.storage.opened_at_ts == opened

    async def repaired() -> bool:
        await a.storage.sync(force=True)
        return await _state_is(aredis, breaker_key, "open")

    await wait_for(repaired)

    # 2. A process whose "closed" was queued during its own Redis outage comes back after another
    #    process opened the breaker: its older transition is refused, it adopts the newer "open".
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    key2 = breaker_key + ":2"
    try:
        stale = breakers(server.url, key=key2, fail_max=2, redis_backoff_s=0.1)
        await stale.reset()
        server.stop()
        await stale.reset()  # "closed", queued while Redis is away
        assert stale.storage.has_pending()
        server = RedisServer(tmp_path / "redis", port=port).start()
        newer = breakers(server.url, key=key2, fail_max=2)
        await trip(newer)  # "open", written now: newer than the queued "closed"
        await newer.storage.sync(force=True)
        await asyncio.sleep(0.15)  # past the stale process's Redis backoff
        await stale.storage.sync(force=True)
        assert not stale.storage.has_pending()
        assert stale.current_state == "open"
        with pytest.raises(BreakerOpen):
            await stale.call(ok)
        check = redis_client(server.url)
        try:
            assert (await read_breaker_state(check, key2))["state"] == "open"
        finally:
            await check.aclose()
    finally:
        server.stop()


async def _state_is(redis: aioredis.Redis, key: str, state: str) -> bool:
    return (await read_breaker_state(redis, key))["state"] == state


async def test_half_open_lets_one_trial_through_across_processes(breakers: Factory, aredis: aioredis.Redis,
                                                                 breaker_key: str) -> None:
    procs = [breakers(fail_max=1, reset_timeout_s=0.3, trial_lease_s=5) for _ in range(3)]
    with pytest.raises(BreakerOpen):
        await procs[0].call(fail)
    await asyncio.sleep(0.45)  # past the reset timeout; every mirror has refreshed
    entered = 0
    running = 0
    most = 0
    release = asyncio.Event()

    async def trial_call() -> str:
        nonlocal entered, running, most
        entered += 1
        running += 1
        most = max(most, running)
        try:
            await release.wait()
            return "ok"
        finally:
            running -= 1

    async def attempt(b: SharedBreaker) -> str:
        try:
            return await b.call(trial_call)
        except BreakerOpen as exc:
            assert exc.retry_after >= 1
            return "refused"

    # Three processes, three callers each, at the same moment.
    tasks = [asyncio.create_task(attempt(b)) for b in procs for _ in range(3)]
    await asyncio.sleep(0.3)
    assert entered == 1 and most == 1
    assert sum(t.done() for t in tasks) == 8  # everyone else was refused at once
    # While the trial runs, every process keeps refusing (also after its mirror refreshed).
    await asyncio.sleep(0.15)
    for b in procs:
        with pytest.raises(BreakerOpen):
            await b.call(trial_call)
    assert entered == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 1 and results.count("refused") == 8
    # The trial passed: closed everywhere.
    assert (await read_breaker_state(aredis, breaker_key))["state"] == "closed"
    await asyncio.sleep(0.15)
    for b in procs:
        assert await b.call(ok) == "ok"
    assert sum(b.trials for b in procs) == 1


async def test_a_failed_trial_reopens_and_a_dead_trial_holder_is_replaced(breakers: Factory, aredis: aioredis.Redis,
                                                                          breaker_key: str) -> None:
    # Timings in seconds, wide enough for a busy machine: reset 1.2, the trial lease 2.0.
    a, b = breakers(fail_max=1, reset_timeout_s=1.2, trial_lease_s=2.0), breakers(fail_max=1, reset_timeout_s=1.2,
                                                                                    trial_lease_s=2.0)
    with pytest.raises(BreakerOpen):
        await a.call(fail)
    await asyncio.sleep(1.5)
    with pytest.raises(BreakerOpen):  # the trial fails: open again, for a new reset timeout
        await a.call(fail)
    state = await read_breaker_state(aredis, breaker_key)
    assert state["state"] == "open" and state["opened_at"] > time.time() - 1.2
    await asyncio.sleep(0.3)
    with pytest.raises(BreakerOpen):  # well within the new reset timeout
        await b.call(ok)

    # A trial holder that dies (its lease is never released) blocks the others only until the lease expires.
    await asyncio.sleep(1.2)
    await aredis.set(b.trial_key, "someone-who-died", px=2000)
    with pytest.raises(BreakerOpen):
        await b.call(ok)
    await asyncio.sleep(2.4)
    assert await b.call(ok) == "ok"
    assert (await read_breaker_state(aredis, breaker_key))["state"] == "closed"


async def test_a_cancelled_trial_does_not_close_the_breaker(breakers: Factory, aredis: aioredis.Redis,
                                                            breaker_key: str) -> None:
    a = breakers(fail_max=1, reset_timeout_s=0.2)
    with pytest.raises(BreakerOpen):
        await a.call(fail)
    await asyncio.sleep(0.3)

    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(a.call(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.current_state == "open"
    assert (await read_breaker_state(aredis, breaker_key))["state"] == "open"
    assert await aredis.get(a.trial_key) is None  # the lease was given back
