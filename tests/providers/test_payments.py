"""GuardedProvider against the real simulator and a real Redis: breaker, bulkhead, retries, budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.store.redis import RedisStore
from gateway.providers.breaker import SharedBreaker, read_breaker_state
from gateway.providers.bulkhead import Bulkhead
from gateway.providers.limiter import AdaptiveLimiter
from gateway.providers.payments import (GuardedProvider, PaymentDeclined, PaymentRejected, ProviderSettings,
                                        ProviderUnavailable, RetryPolicy, SimulatorProvider,
                                        build_payment_provider)
from gateway.stack.embedded import free_port

pytestmark = pytest.mark.anyio

Factory = Callable[..., GuardedProvider]


@pytest.fixture
async def guarded(simulator_url: str, aredis: aioredis.Redis, breaker_key: str) -> AsyncIterator[Factory]:
    made: list[GuardedProvider] = []

    def make(*, url: str = simulator_url, fail_max: int = 3, reset_s: float = 10.0, concurrency: int = 8,
             attempts: int = 1, timeout_s: float = 2.0, key: str = breaker_key,
             redis: aioredis.Redis = aredis, limiter: AdaptiveLimiter | None = None) -> GuardedProvider:
        inner = SimulatorProvider(url, timeout_s=timeout_s, max_connections=concurrency)
        breaker = SharedBreaker("payments", redis=redis, key=key, fail_max=fail_max, reset_timeout_s=reset_s,
                                exclude=(PaymentDeclined, PaymentRejected))
        provider = GuardedProvider(inner, breaker=breaker, bulkhead=Bulkhead("payments", concurrency, 0.05),
                                   retry=RetryPolicy(attempts, 0.05, 0.2), timeout_s=timeout_s, limiter=limiter)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def authorize(p: GuardedProvider, key: str, reference: str = "order") -> object:
    return await p.authorize(idempotency_key=key, amount_minor=2500, currency="EUR", reference=reference)


async def test_authorize_capture_refund(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded()
    auth = await authorize(p, "k1")
    assert auth.status == "authorized" and auth.amount_minor == 2500 and auth.currency == "EUR"
    cap = await p.capture(idempotency_key="c1", payment_id=auth.payment_id, amount_minor=2500)
    assert cap.status == "captured"
    ref = await p.refund(idempotency_key="r1", payment_id=auth.payment_id, amount_minor=2500)
    assert ref.status == "refunded" and ref.refund_id
    again = await authorize(p, "k1")
    assert again == auth  # same key, same answer
    with pytest.raises(PaymentRejected):
        await p.refund(idempotency_key="r2", payment_id=auth.payment_id, amount_minor=1)


async def test_decline_is_not_retried_nor_counted(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded(attempts=3, fail_max=2)
    for i in range(4):
        with pytest.raises(PaymentDeclined) as info:
            await authorize(p, f"d{i}", reference="decline-me")
    assert info.value.to_domain().code == "payment_declined" and info.value.to_domain().status == 402
    assert sim.get("/_stats").json()["authorize"] == 4
    assert (await p.breaker.snapshot())["state"] == "closed"


async def test_503_is_retried_then_unavailable(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded(attempts=3, fail_max=10)
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "f1", reference="fail")
    assert sim.get("/_stats").json()["authorize"] == 3
    err = info.value.to_domain()
    assert err.code == "payments_unavailable" and err.status == 503 and err.headers["Retry-After"] == "1"


async def test_retry_succeeds_when_provider_recovers(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded(attempts=8, fail_max=20)
    p.retry = RetryPolicy(8, 0.05, 0.1)
    sim.put("/_config", json={"down": True})

    async def recover() -> None:
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=str(sim.base_url)) as c:
            await c.put("/_config", json={"down": False})

    task = asyncio.create_task(recover())
    result = await authorize(p, "r1")
    await task
    assert result.status == "authorized"
    stats = sim.get("/_stats").json()
    assert stats["refused_down"] >= 1 and stats["authorize"] == stats["refused_down"] + 1


async def test_breaker_opens_fails_fast_then_half_opens_and_closes(guarded: Factory, sim: httpx.Client,
                                                                   aredis: aioredis.Redis, breaker_key: str) -> None:
    p = guarded(fail_max=3, reset_s=0.6)
    sim.put("/_config", json={"down": True})
    reasons = []
    for i in range(3):
        with pytest.raises(ProviderUnavailable) as info:
            await authorize(p, f"o{i}")
        reasons.append(info.value.reason)
    assert reasons[-1] == "breaker_open"  # the third failure trips it
    assert sim.get("/_stats").json()["authorize"] == 3

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "fast")
    assert time.monotonic() - started < 0.5  # no call: one read of the shared breaker state
    assert info.value.reason == "breaker_open" and info.value.retry_after == 1
    assert sim.get("/_stats").json()["authorize"] == 3  # the provider was not called
    assert (await read_breaker_state(aredis, breaker_key))["state"] == "open"

    # Still down after the reset timeout: the trial call fails and the breaker opens again.
    await asyncio.sleep(0.7)
    with pytest.raises(ProviderUnavailable):
        await authorize(p, "trial-1")
    assert sim.get("/_stats").json()["authorize"] == 4
    assert (await p.breaker.snapshot())["state"] == "open"

    # Recovered: the next trial call passes and closes the breaker.
    sim.put("/_config", json={"down": False})
    await asyncio.sleep(0.7)
    assert (await authorize(p, "trial-2")).status == "authorized"
    snap = await p.breaker.snapshot()
    assert snap["state"] == "closed" and snap["failures"] == 0
    assert (await read_breaker_state(aredis, breaker_key))["state"] == "closed"


async def test_breaker_state_is_shared_between_workers(guarded: Factory, sim: httpx.Client,
                                                       redis_server_url: str) -> None:
    from gateway.store.redis import redis_client

    other_redis = redis_client(redis_server_url)
    try:
        worker_a = guarded(fail_max=2, reset_s=30)
        worker_b = guarded(fail_max=2, reset_s=30, redis=other_redis)
        assert (await authorize(worker_b, "warm")).status == "authorized"
        sim.put("/_config", json={"down": True})
        for i in range(2):
            with pytest.raises(ProviderUnavailable):
                await authorize(worker_a, f"a{i}")
        calls = sim.get("/_stats").json()["authorize"]
        await asyncio.sleep(0.15)  # worker B's mirror refreshes within 100 ms
        with pytest.raises(ProviderUnavailable) as info:
            await authorize(worker_b, "b1")
        assert info.value.reason == "breaker_open" and 25 <= info.value.retry_after <= 30
        assert sim.get("/_stats").json()["authorize"] == calls
        # Failures are summed across workers too: one failure each trips a fresh breaker.
        await worker_a.breaker.reset()
        await asyncio.sleep(0.15)
        with pytest.raises(ProviderUnavailable):
            await authorize(worker_a, "a9")
        await asyncio.sleep(0.15)
        with pytest.raises(ProviderUnavailable) as info:
            await authorize(worker_b, "b9")
        assert info.value.reason == "breaker_open"
    finally:
        await other_redis.aclose()


async def test_a_full_queue_refuses_the_extra_call_fast(guarded: Factory, sim: httpx.Client) -> None:
    # The limit (3, capped by the bulkhead) is taken and nobody may wait: refused at once, not counted.
    p = guarded(concurrency=3, timeout_s=5.0, limiter=AdaptiveLimiter("payments", initial=3, queue_max=0))
    sim.put("/_config", json={"latency_ms": 600})
    in_flight = [asyncio.create_task(authorize(p, f"slow{i}")) for i in range(3)]
    for _ in range(100):  # the three calls are under way (600 ms each)
        if p.bulkhead.in_flight == 3:
            break
        await asyncio.sleep(0.01)
    assert p.bulkhead.in_flight == 3
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "extra")
    # refused at once, not after waiting for a slot (a slot frees only when a 600 ms call ends)
    assert time.monotonic() - started < 0.5 and info.value.reason == "busy"
    results = await asyncio.gather(*in_flight)
    assert all(r.status == "authorized" for r in results)
    assert sim.get("/_stats").json()["authorize"] == 3
    assert (await p.breaker.snapshot())["failures"] == 0  # a full queue is not a provider fault
    assert p.limiter.shed_queue_full == 1 and info.value.retry_after >= 1


async def test_slow_provider_answers_within_the_budget(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded(timeout_s=0.4, attempts=3, fail_max=10)
    sim.put("/_config", json={"latency_ms": 3000})
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "t1")
    assert time.monotonic() - started < 1.0  # one 0.4 s attempt's budget (three would take 1.2 s), not 3 s
    assert info.value.reason == "timeout"
    assert (await p.breaker.snapshot())["failures"] == 1


async def test_find_through_the_guard(guarded: Factory, sim: httpx.Client) -> None:
    """The lookup recovery uses: the payment an authorize key created, in its current state, or None."""
    p = guarded(attempts=2)
    assert await p.find(idempotency_key="o-9:authorize") is None
    auth = await authorize(p, "o-9:authorize")
    found = await p.find(idempotency_key="o-9:authorize")
    assert found is not None and found.payment_id == auth.payment_id and found.status == "authorized"
    await p.capture(idempotency_key="o-9:capture", payment_id=auth.payment_id, amount_minor=2000)
    found = await p.find(idempotency_key="o-9:authorize")
    assert found is not None and found.status == "captured" and found.amount_minor == 2000  # what was taken
    assert found.currency == "EUR"
    sim.put("/_config", json={"down": True}).raise_for_status()
    with pytest.raises(ProviderUnavailable):  # a provider fault, as for any call: the caller asks again later
        await p.find(idempotency_key="o-9:authorize")
    assert (await p.breaker.snapshot())["failures"] >= 1


async def test_connection_refused_counts_as_failure(guarded: Factory) -> None:
    p = guarded(url=f"http://127.0.0.1:{free_port()}", fail_max=2, attempts=1)
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "c1")
    assert info.value.reason.startswith("connection")
    with pytest.raises(ProviderUnavailable) as info:
        await authorize(p, "c2")
    assert info.value.reason == "breaker_open"


async def test_build_payment_provider(simulator_url: str, sim: httpx.Client, aredis: aioredis.Redis,
                                      redis_server_url: str, redis_prefix: str, tmp_path) -> None:
    settings = Settings(environment="test", redis_url=redis_server_url, redis_prefix=f"{redis_prefix}:bp",
                        data_dir=tmp_path, secret_key="test-" + "x" * 40)
    runtime = Runtime(settings, RedisStore.from_settings(settings))
    provider = build_payment_provider(runtime, provider_settings=ProviderSettings(url=simulator_url,
                                                                                  max_concurrency=4))
    try:
        assert provider.bulkhead.max_concurrency == 4
        assert (await authorize(provider, "b1")).status == "authorized"
        state = await read_breaker_state(aredis, f"{redis_prefix}:bp:breaker:payments")
        assert state["state"] == "closed"
    finally:
        await provider.aclose()
        await runtime.close()
    with pytest.raises(TypeError):
        build_payment_provider(settings)


async def test_provider_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHGATE_PAYMENTS_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("FLASHGATE_PAYMENTS_BREAKER_FAIL_MAX", "9")
    ps = ProviderSettings()
    assert ps.url == "http://127.0.0.1:1234" and ps.breaker_fail_max == 9 and ps.timeout_s == 2.0
