"""The payment-provider simulator over real HTTP.

Every test here runs twice: against one worker with its state in memory, and against four
worker processes sharing their state in Redis (the way the test session and `flashgate up`
run it). Responses name the worker that answered (`X-Simulator-Worker`), so the tests can
send related calls through connections that land on different workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import free_port, stop_process

WORKER = "x-simulator-worker"


@pytest.fixture(scope="module", params=["memory-1", "redis-4"])
def simulator_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def simulator_url(simulator_kind: str, redis_server_url: str, redis_prefix: str) -> Iterator[str]:
    """Overrides the provider tests' simulator: this module runs against both kinds."""
    if simulator_kind == "memory-1":
        proc, url = start_simulator_process(workers=1, redis_url=None)
    else:
        proc, url = start_simulator_process(workers=4, redis_url=redis_server_url,
                                            prefix=f"{redis_prefix}:sim{secrets.token_hex(3)}", forget_on_exit=True)
    yield url
    stop_process(proc)


@pytest.fixture
def workers(simulator_kind: str) -> int:
    return int(simulator_kind.rsplit("-", 1)[1])


@contextlib.contextmanager
def clients_on_workers(url: str, want: int, tries: int = 40) -> Iterator[list[httpx.Client]]:
    """Up to `want` clients, each holding one keep-alive connection to a different worker."""
    chosen: dict[str, httpx.Client] = {}
    with contextlib.ExitStack() as stack:
        for _ in range(tries):
            client = stack.enter_context(httpx.Client(base_url=url, timeout=10,
                                                      limits=httpx.Limits(max_connections=1)))
            pid = client.get("/_config").headers[WORKER]
            chosen.setdefault(pid, client)
            if len(chosen) >= want:
                break
        yield list(chosen.values())


@contextlib.asynccontextmanager
async def connections(url: str, n: int, timeout: float = 10) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`n` async clients of one connection each (connections spread over the workers)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=timeout,
                                                                 limits=httpx.Limits(max_connections=1)))
               for _ in range(n)]


async def aauthorize(client: httpx.AsyncClient, key: str, *, amount: int = 1500,
                     reference: str = "order-1") -> httpx.Response:
    return await client.post("/v1/payments/authorize",
                             json={"amount_minor": amount, "currency": "EUR", "reference": reference},
                             headers={"Idempotency-Key": key})


def authorize(sim: httpx.Client, key: str, *, amount: int = 1500, reference: str = "order-1") -> httpx.Response:
    return sim.post("/v1/payments/authorize", json={"amount_minor": amount, "currency": "EUR", "reference": reference},
                    headers={"Idempotency-Key": key})


def test_authorize_capture_refund(sim: httpx.Client) -> None:
    resp = authorize(sim, "a1")
    assert resp.status_code == 201
    body = resp.json()
    assert body["status"] == "authorized" and body["amount_minor"] == 1500 and body["currency"] == "EUR"
    pid = body["id"]

    cap = sim.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500}, headers={"Idempotency-Key": "c1"})
    assert cap.status_code == 200 and cap.json()["status"] == "captured"

    ref = sim.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 500}, headers={"Idempotency-Key": "r1"})
    assert ref.status_code == 200
    assert ref.json()["status"] == "refunded" and ref.json()["refund_id"].startswith("re_")

    got = sim.get(f"/v1/payments/{pid}").json()
    assert got["captured_minor"] == 1500 and got["refunded_minor"] == 500

    too_much = sim.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 5000}, headers={"Idempotency-Key": "r2"})
    assert too_much.status_code == 409
    assert sim.get("/v1/payments/pay_nope").status_code == 404
    stats = sim.get("/_stats").json()
    assert stats["authorize"] == 1 and stats["capture"] == 1 and stats["refund"] == 2 and stats["get"] == 2


def test_same_idempotency_key_same_answer(sim: httpx.Client) -> None:
    first = authorize(sim, "same")
    second = authorize(sim, "same")
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    other = authorize(sim, "same", amount=999)
    assert other.status_code == 422
    pid = first.json()["id"]
    refunds = [sim.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500},
                        headers={"Idempotency-Key": "cap"}).json() for _ in range(3)]
    assert refunds[0] == refunds[1] == refunds[2]
    assert authorize(sim, "").status_code == 400  # the key is required


def test_decline_by_reference_and_rate(sim: httpx.Client) -> None:
    declined = authorize(sim, "d1", reference="please-decline")
    assert declined.status_code == 201 and declined.json()["status"] == "declined"
    # A declined payment cannot be captured.
    pid = declined.json()["id"]
    assert sim.post(f"/v1/payments/{pid}/capture", json={}, headers={"Idempotency-Key": "c"}).status_code == 409
    # The same key replays the decline.
    assert authorize(sim, "d1", reference="please-decline").json() == declined.json()

    sim.put("/_config", json={"decline_rate": 1.0}).raise_for_status()
    assert all(authorize(sim, f"r{i}").json()["status"] == "declined" for i in range(5))


def test_failure_rate_and_down(sim: httpx.Client) -> None:
    sim.put("/_config", json={"failure_rate": 1.0}).raise_for_status()
    assert authorize(sim, "f1").status_code == 503
    # Failures are not remembered: the same key succeeds once the provider recovers.
    sim.put("/_config", json={"failure_rate": 0.0}).raise_for_status()
    assert authorize(sim, "f1").status_code == 201

    sim.put("/_config", json={"down": True}).raise_for_status()
    assert sim.get("/_config").json()["down"] is True
    resp = authorize(sim, "f2")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "down"
    assert authorize(sim, "x", reference="fail").status_code == 503
    stats = sim.get("/_stats").json()
    assert stats["failed"] == 1 and stats["refused_down"] == 2


def test_latency(sim: httpx.Client) -> None:
    sim.put("/_config", json={"latency_ms": 200}).raise_for_status()
    started = time.monotonic()
    assert authorize(sim, "slow").status_code == 201
    assert time.monotonic() - started >= 0.2


def test_bad_config_and_body(sim: httpx.Client) -> None:
    assert sim.put("/_config", json={"failure_rate": 2}).status_code == 400
    bad = sim.post("/v1/payments/authorize", content=b"[1]", headers={"Idempotency-Key": "k"})
    assert bad.status_code == 400
    missing = sim.post("/v1/payments/authorize", json={"currency": "EUR"}, headers={"Idempotency-Key": "k2"})
    assert missing.status_code == 400


def test_find_a_payment_by_its_authorize_key(sim: httpx.Client) -> None:
    """What recovery asks after a crash: did the authorize call with this key create a payment, and
    what became of it?"""
    def find(key: str) -> httpx.Response:
        return sim.get("/v1/payments", params={"idempotency_key": key})

    missing = find("o-1:authorize")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    pid = authorize(sim, "o-1:authorize", reference="o-1:card").json()["id"]
    found = find("o-1:authorize")
    assert found.status_code == 200
    assert found.json()["id"] == pid and found.json()["status"] == "authorized"
    assert found.json()["reference"] == "o-1:card" and found.json()["captured_minor"] == 0
    sim.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500}, headers={"Idempotency-Key": "o-1:capture"})
    assert find("o-1:authorize").json()["status"] == "captured"
    sim.post(f"/v1/payments/{pid}/refund", json={}, headers={"Idempotency-Key": "o-1:refund"})
    assert find("o-1:authorize").json()["status"] == "refunded"
    assert find("o-1:capture").status_code == 404, "only an authorize call creates a payment"
    assert authorize(sim, "o-2:authorize", reference="o-2:fail").status_code == 503
    assert find("o-2:authorize").status_code == 404, "a failed authorize created nothing"
    assert sim.get("/v1/payments").status_code == 400
    assert sim.post("/v1/payments", params={"idempotency_key": "o-1:authorize"}).status_code == 405
    sim.put("/_config", json={"down": True}).raise_for_status()
    assert find("o-1:authorize").status_code == 503
    assert sim.get("/_stats").json()["find"] == 7


@pytest.mark.anyio
async def test_capture_latency_slows_captures_only(simulator_url: str, sim: httpx.Client) -> None:
    sim.put("/_config", json={"capture_latency_ms": 3000}).raise_for_status()
    assert sim.get("/_config").json()["capture_latency_ms"] == 3000.0
    pid = authorize(sim, "slow-cap:authorize").json()["id"]  # answered, not held back 3 s
    async with httpx.AsyncClient(base_url=simulator_url, timeout=10) as client:
        capture = asyncio.create_task(client.post(f"/v1/payments/{pid}/capture", json={},
                                                  headers={"Idempotency-Key": "slow-cap:capture"}))
        while not sim.get("/_stats").json().get("capture"):
            await asyncio.sleep(0.01)
        # The capture is at the provider: the payment is not captured until it has taken its time.
        assert sim.get("/v1/payments", params={"idempotency_key": "slow-cap:authorize"}).json()["status"] == \
            "authorized"
        assert (await capture).json()["status"] == "captured"
    assert sim.get("/v1/payments", params={"idempotency_key": "slow-cap:authorize"}).json()["status"] == "captured"


def test_process_takes_its_configuration() -> None:
    proc, url = start_simulator_process(decline_rate=1.0, latency_ms=10)
    try:
        config = httpx.get(url + "/_config").json()
        assert {k: config[k] for k in ("latency_ms", "decline_rate", "failure_rate", "down")} == {
            "latency_ms": 10.0, "decline_rate": 1.0, "failure_rate": 0.0, "down": False}
        resp = httpx.post(url + "/v1/payments/authorize", headers={"Idempotency-Key": "k"},
                          json={"amount_minor": 100, "currency": "EUR", "reference": "r"})
        assert resp.json()["status"] == "declined"
    finally:
        stop_process(proc)
    assert proc.returncode is not None


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError):
        start_simulator_process(latency=5)


# --- several workers, one provider -----------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_calls_with_the_same_keys_charge_once(simulator_url: str, sim: httpx.Client,
                                                               workers: int) -> None:
    """200 concurrent authorizations with 50 keys over 16 connections: 50 payments, one answer per key."""
    keys = [f"key-{i:02d}" for i in range(50)]
    async with connections(simulator_url, 16) as conns:
        calls = [(keys[i % 50], conns[i % 16]) for i in range(200)]
        answers = await asyncio.gather(*(aauthorize(conn, key) for key, conn in calls))
    by_key: dict[str, list[httpx.Response]] = {}
    for (key, _), resp in zip(calls, answers):
        by_key.setdefault(key, []).append(resp)
    assert all(resp.status_code == 201 for resp in answers), Counter(r.status_code for r in answers)
    for key, resps in by_key.items():
        assert len({r.content for r in resps}) == 1, f"{key} got different answers"
        assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in resps) == 1, key
    assert len({r.json()["id"] for r in answers}) == 50
    stats = sim.get("/_stats").json()
    assert stats["authorize"] == 200 and stats["authorized"] == 50 and stats["replayed"] == 150
    served = {r.headers[WORKER] for r in answers}
    assert len(served) == workers or (workers > 1 and len(served) >= 2), served


def test_a_one_step_charge_captures_once_on_every_worker(simulator_url: str, sim: httpx.Client, workers: int) -> None:
    """`capture: true` on authorize captures in the same call; replayed with its key on another worker it
    answers the same payment; a capture after it is refused (already captured); `find` reports it
    captured; the refund returns it all; a `capture` that is not a boolean is a 400 that creates nothing."""
    body = {"amount_minor": 1500, "currency": "EUR", "reference": "order-9", "capture": True}
    with clients_on_workers(simulator_url, 2) as found:
        a, b = found[0], found[-1]
        first = a.post("/v1/payments/authorize", json=body, headers={"Idempotency-Key": "one-step"})
        assert first.status_code == 201 and first.json()["status"] == "captured", first.text
        again = b.post("/v1/payments/authorize", json=body, headers={"Idempotency-Key": "one-step"})
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        pid = first.json()["id"]
        late = b.post(f"/v1/payments/{pid}/capture", json={}, headers={"Idempotency-Key": "one-step-cap"})
        assert late.status_code == 409
        got = b.get("/v1/payments", params={"idempotency_key": "one-step"}).json()
        assert got["status"] == "captured" and got["captured_minor"] == 1500
        ref = a.post(f"/v1/payments/{pid}/refund", json={}, headers={"Idempotency-Key": "one-step-ref"})
        assert ref.status_code == 200 and ref.json()["amount_minor"] == 1500
        bad = a.post("/v1/payments/authorize", json={**body, "capture": "yes"}, headers={"Idempotency-Key": "bad"})
        assert bad.status_code == 400 and "capture" in bad.json()["error"]["message"]
        declined = a.post("/v1/payments/authorize", json={**body, "reference": "please-decline"},
                          headers={"Idempotency-Key": "one-step-declined"})
        assert declined.json()["status"] == "declined"
    stats = sim.get("/_stats").json()
    assert stats["captured"] == 1 and stats["declined"] == 1 and not stats.get("authorized"), stats


def test_capture_and_refund_through_another_worker(simulator_url: str, sim: httpx.Client, workers: int) -> None:
    with clients_on_workers(simulator_url, 2) as found:
        assert len(found) == min(workers, 2)
        a, b = found[0], found[-1]
        auth = authorize(a, "x-auth")
        pid = auth.json()["id"]
        cap = b.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500}, headers={"Idempotency-Key": "x-cap"})
        assert cap.status_code == 200 and cap.json()["status"] == "captured"
        again = a.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500}, headers={"Idempotency-Key": "x-cap"})
        assert again.json() == cap.json() and again.headers["Idempotent-Replayed"] == "true"
        ref = b.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 1500}, headers={"Idempotency-Key": "x-ref"})
        assert ref.status_code == 200
        ref_again = a.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 1500},
                           headers={"Idempotency-Key": "x-ref"})
        assert ref_again.json() == ref.json()  # the same refund id: refunded once
        got = a.get(f"/v1/payments/{pid}").json()
        assert got["status"] == "refunded" and got["captured_minor"] == 1500 and got["refunded_minor"] == 1500
        # a second refund with a new key finds nothing left, on either worker
        assert b.post(f"/v1/payments/{pid}/refund", json={}, headers={"Idempotency-Key": "x-ref2"}).status_code == 409
        if workers > 1:
            assert auth.headers[WORKER] != cap.headers[WORKER] == ref.headers[WORKER] != again.headers[WORKER]


@pytest.mark.anyio
async def test_same_key_while_the_first_call_runs_is_409_then_replays(simulator_url: str, sim: httpx.Client) -> None:
    """Stripe's rule: a concurrent request with a key in use gets 409 and nothing is stored; later, the answer."""
    sim.put("/_config", json={"latency_ms": 500}).raise_for_status()
    async with connections(simulator_url, 4) as conns:
        answers = await asyncio.gather(*(aauthorize(conn, "busy-key") for conn in conns))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 409, 409, 409], codes
        first = next(r for r in answers if r.status_code == 201)
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"idempotency_key_in_use"}
        later = await aauthorize(conns[-1], "busy-key")
    assert later.status_code == 201 and later.json() == first.json()
    assert later.headers["Idempotent-Replayed"] == "true"
    stats = sim.get("/_stats").json()
    assert stats["authorized"] == 1 and stats["in_progress"] == 3


@pytest.mark.anyio
async def test_rate_limit_answers_429_with_retry_after(simulator_url: str, sim: httpx.Client) -> None:
    rate = 40
    sim.put("/_config", json={"rate_limit_per_s": rate}).raise_for_status()  # bucket of one second's worth
    codes: Counter[int] = Counter()
    limited: list[httpx.Response] = []
    async with connections(simulator_url, 8) as conns:
        started = time.monotonic()

        async def lane(i: int, conn: httpx.AsyncClient) -> None:
            n = 0
            while time.monotonic() - started < 1.5:
                resp = await aauthorize(conn, f"rl-{i}-{n}")
                n += 1
                codes[resp.status_code] += 1
                if resp.status_code == 429:
                    limited.append(resp)

        await asyncio.gather(*(lane(i, conn) for i, conn in enumerate(conns)))
        elapsed = time.monotonic() - started
    allowed = codes[201]
    assert set(codes) <= {201, 429} and codes[429] > 0, codes
    # a bucket of `rate` tokens, refilled at `rate`/s: generous bounds around burst + rate x time
    assert rate * 1.0 * 0.5 <= allowed <= rate + rate * elapsed * 1.5 + 5, (allowed, elapsed, codes)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert {r.json()["error"]["code"] for r in limited} == {"rate_limited"}
    assert sim.get("/_stats").json()["rate_limited"] == codes[429]
    # switched off, every call goes through again
    sim.put("/_config", json={"rate_limit_per_s": 0}).raise_for_status()
    assert all(authorize(sim, f"after-{i}").status_code == 201 for i in range(5))


@pytest.mark.anyio
async def test_latency_follows_the_configured_distribution(simulator_url: str, sim: httpx.Client) -> None:
    sim.put("/_config", json={"latency_p50_ms": 60, "latency_p99_ms": 300}).raise_for_status()
    durations: list[float] = []
    async with connections(simulator_url, 10) as conns:
        await asyncio.gather(*(conn.get("/_config") for conn in conns))  # connections open before timing

        async def lane(i: int, conn: httpx.AsyncClient) -> None:
            for n in range(8):
                t0 = time.monotonic()
                resp = await aauthorize(conn, f"lat-{i}-{n}")
                durations.append(time.monotonic() - t0)
                assert resp.status_code == 201

        await asyncio.gather(*(lane(i, conn) for i, conn in enumerate(conns)))
    durations.sort()
    median, p90 = statistics.median(durations), durations[int(len(durations) * 0.9)]
    assert 0.035 <= median <= 0.2, durations  # wide band around the 60 ms median
    assert p90 > 1.4 * median, (median, p90)  # a long tail, not a fixed delay (expected ratio ~2.4)
    # p99 below p50 makes no distribution
    assert sim.put("/_config", json={"latency_p50_ms": 100, "latency_p99_ms": 50}).status_code == 400


def test_storm_switches_failures_on_and_off(sim: httpx.Client) -> None:
    sim.put("/_config", json={"storm": {"duration_s": 1.0, "failure_rate": 1.0}}).raise_for_status()
    assert sim.get("/_config").json()["storm_active"] is True
    failed = authorize(sim, "storm-1")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "temporarily_unavailable"
    deadline = time.monotonic() + 5
    while sim.get("/_config").json()["storm_active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.get("/_config").json()["storm_active"] is False
    assert authorize(sim, "storm-1").status_code == 201  # the failure was not remembered
    assert sim.get("/_stats").json()["failed"] == 1


def test_periodic_storm_comes_back(sim: httpx.Client) -> None:
    sim.put("/_config", json={"storm": {"every_s": 0.6, "duration_s": 0.3}}).raise_for_status()
    seen: list[int] = []
    deadline = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < deadline:
        status = authorize(sim, f"p-{i}").status_code
        i += 1
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.02)
    # storms, calm, storm again (at least): 503, 201, 503 in that order
    assert seen[:1] == [503] and seen.count(503) >= 2 and 201 in seen, seen
    sim.put("/_config", json={"storm": None}).raise_for_status()
    assert sim.get("/_config").json()["storm"] is None
    assert authorize(sim, "p-after").status_code == 201


def test_timeout_storm_hangs_calls(simulator_url: str, sim: httpx.Client) -> None:
    sim.put("/_config", json={"storm": {"duration_s": 30, "mode": "timeout", "timeout_ms": 400}}).raise_for_status()
    started = time.monotonic()
    hung = authorize(sim, "hang-1")
    assert hung.status_code == 504 and time.monotonic() - started >= 0.4
    with httpx.Client(base_url=simulator_url, timeout=0.1) as impatient:
        with pytest.raises(httpx.TimeoutException):
            authorize(impatient, "hang-2")
    sim.put("/_config", json={"storm": None}).raise_for_status()
    assert authorize(sim, "hang-1").status_code == 201
    assert sim.get("/_stats").json()["timed_out"] == 2


def test_config_stats_and_reset_reach_every_worker(simulator_url: str, sim: httpx.Client, workers: int) -> None:
    with clients_on_workers(simulator_url, workers) as found:
        assert len(found) == workers
        found[0].put("/_config", json={"decline_rate": 1.0, "failure_rate": 0.0}).raise_for_status()
        for i, client in enumerate(found):
            assert client.get("/_config").json()["decline_rate"] == 1.0
            assert authorize(client, f"cfg-{i}").json()["status"] == "declined"
        stats = [client.get("/_stats").json() for client in found]
        assert all(s == stats[0] for s in stats) and stats[0]["declined"] == workers, stats
        found[-1].post("/_reset").raise_for_status()
        for client in found:
            assert client.get("/_stats").json() == {}
            assert client.get("/_config").json()["decline_rate"] == 0.0
        for i, client in enumerate(found):  # the keys were forgotten too
            resp = authorize(client, f"cfg-{i}")
            assert resp.json()["status"] == "authorized" and "Idempotent-Replayed" not in resp.headers


def test_reset_during_a_slow_call_leaves_nothing_behind(simulator_url: str, sim: httpx.Client) -> None:
    sim.put("/_config", json={"latency_ms": 600}).raise_for_status()
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(httpx.Client(base_url=simulator_url, timeout=5))
        import concurrent.futures

        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        slow = pool.submit(authorize, other, "slow-1")
        time.sleep(0.2)
        sim.post("/_reset").raise_for_status()
        resp = slow.result()
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "reset"
    assert sim.get("/_stats").json() == {}
    fresh = authorize(sim, "slow-1")
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers


def test_several_workers_need_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHGATE_SIMULATOR_REDIS_URL", raising=False)
    with pytest.raises(ValueError):
        start_simulator_process(workers=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_SIMULATOR_")}
    out = subprocess.run([sys.executable, "-m", "gateway.providers.simulator", "--workers", "2",
                          "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--redis-url" in out.stderr


def test_workers_start_with_the_launch_configuration_and_forget_it(redis_server_url: str,
                                                                   redis_prefix: str) -> None:
    prefix = f"{redis_prefix}:launch{secrets.token_hex(3)}"
    proc, url = start_simulator_process(workers=2, redis_url=redis_server_url, prefix=prefix, forget_on_exit=True,
                                        decline_rate=1.0, rate_limit_per_s=1000)
    client = redis.Redis.from_url(redis_server_url)
    try:
        with clients_on_workers(url, 2) as found:
            assert len(found) == 2
            for i, c in enumerate(found):
                config = c.get("/_config").json()
                assert config["decline_rate"] == 1.0 and config["rate_limit_per_s"] == 1000.0
                assert authorize(c, f"l{i}").json()["status"] == "declined"
        assert client.exists(f"{prefix}:stats")
    finally:
        stop_process(proc)
    try:
        assert proc.returncode == 0
        assert list(client.scan_iter(match=f"{prefix}:*")) == []
    finally:
        client.close()
