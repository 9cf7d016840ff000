"""SharedBreaker and Bulkhead on their own (real Redis; a closed port for the Redis-down case)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from gateway.store.redis import redis_client
from gateway.providers.breaker import BreakerOpen, SharedBreaker, read_breaker_state
from gateway.providers.bulkhead import Bulkhead, BulkheadFull
from gateway.stack.embedded import free_port

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


class Answer(Exception):
    pass


async def fail() -> None:
    raise Boom()


async def ok() -> str:
    return "ok"


async def test_opens_after_fail_max_and_refuses_without_calling(aredis: aioredis.Redis, breaker_key: str) -> None:
    breaker = SharedBreaker("t", redis=aredis, key=breaker_key, fail_max=3, reset_timeout_s=5,
                            exclude=(Answer,))
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(fail)
    with pytest.raises(BreakerOpen) as info:
        await breaker.call(fail)
    assert info.value.retry_after == 5 and 4.5 < info.value.remaining_s <= 5
    called = []

    async def spy() -> None:
        called.append(1)

    with pytest.raises(BreakerOpen):
        await breaker.call(spy)
    with pytest.raises(BreakerOpen):
        await breaker.check()
    assert called == []
    state = await read_breaker_state(aredis, breaker_key)
    assert state["state"] == "open" and state["failures"] == 3 and state["opened_at"] <= time.time()
    await breaker.reset()
    assert (await breaker.snapshot())["state"] == "closed"
    assert await breaker.call(ok) == "ok"


async def test_excluded_answers_do_not_count(aredis: aioredis.Redis, breaker_key: str) -> None:
    breaker = SharedBreaker("t", redis=aredis, key=breaker_key, fail_max=2, exclude=(Answer,))

    async def answer() -> None:
        raise Answer()

    for _ in range(5):
        with pytest.raises(Answer):
            await breaker.call(answer)
    assert (await breaker.snapshot()) == {"name": "t", "state": "closed", "failures": 0}


async def test_cancellation_is_not_a_failure(aredis: aioredis.Redis, breaker_key: str) -> None:
    breaker = SharedBreaker("t", redis=aredis, key=breaker_key, fail_max=1)

    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await breaker.snapshot())["state"] == "closed"


async def test_works_locally_when_redis_is_down() -> None:
    dead_redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        breaker = SharedBreaker("t", redis=dead_redis, key="nowhere", fail_max=2, reset_timeout_s=0.2)
        assert await breaker.call(ok) == "ok"
        started = time.monotonic()
        with pytest.raises(Boom):
            await breaker.call(fail)
        with pytest.raises(BreakerOpen):
            await breaker.call(fail)
        with pytest.raises(BreakerOpen):
            await breaker.call(ok)
        assert time.monotonic() - started < 1.0  # Redis is not retried on every call
        await asyncio.sleep(0.25)
        assert await breaker.call(ok) == "ok"
        assert breaker.storage.state == "closed"
    finally:
        await dead_redis.aclose()


async def test_bulkhead_bounds_concurrency() -> None:
    bulkhead = Bulkhead("b", 2, acquire_timeout_s=0.05)
    release = asyncio.Event()

    async def hold() -> None:
        async with bulkhead:
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert bulkhead.in_flight == 2
    started = time.monotonic()
    with pytest.raises(BulkheadFull):
        async with bulkhead:
            pass
    assert time.monotonic() - started < 0.2 and bulkhead.refused == 1
    release.set()
    await asyncio.gather(*holders)
    async with bulkhead:
        assert bulkhead.in_flight == 1
    assert bulkhead.in_flight == 0
    with pytest.raises(ValueError):
        Bulkhead("b", 0)
