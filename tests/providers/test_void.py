"""Voiding an authorization: the simulator's `POST /v1/payments/{id}/void` over real HTTP (both stores),
the provider client and its guard, and checkout releasing an authorization whose capture is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.providers.breaker import SharedBreaker
from gateway.providers.bulkhead import Bulkhead
from gateway.providers.payments import (GuardedProvider, PaymentDeclined, PaymentRejected, ProviderUnavailable,
                                        RetryPolicy, SimulatorProvider)
from gateway.store.keys import checkout_records
# simulator_kind, simulator_url, workers: the void rules hold in memory and in Redis alike (both kinds run).
from tests.providers.test_simulator import (authorize, clients_on_workers, connections, simulator_kind,  # noqa: F401
                                           simulator_url, workers)
from tests.utils.factories import buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


def void(client: httpx.Client, pid: str, key: str | None, body: dict | None = None) -> httpx.Response:
    return client.post(f"/v1/payments/{pid}/void", json=body or {},
                       headers={"Idempotency-Key": key} if key is not None else {})


def test_a_voided_authorization_can_never_be_captured(sim: httpx.Client) -> None:
    pid = authorize(sim, "a1").json()["id"]
    voided = void(sim, pid, "v1")
    assert voided.status_code == 200, voided.text
    assert voided.json() == {"id": pid, "status": "voided", "amount_minor": 1500, "currency": "EUR"}
    got = sim.get(f"/v1/payments/{pid}").json()
    assert got["status"] == "voided" and got["captured_minor"] == 0 and got["refunded_minor"] == 0
    assert sim.get("/v1/payments", params={"idempotency_key": "a1"}).json()["status"] == "voided"

    again = void(sim, pid, "v1")  # the same key: the stored answer, not a 409
    assert again.status_code == 200 and again.json() == voided.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert void(sim, pid, "v1", {"amount_minor": 5}).status_code == 422  # the key with another request

    capture = sim.post(f"/v1/payments/{pid}/capture", json={}, headers={"Idempotency-Key": "c1"})
    assert capture.status_code == 409 and capture.json()["error"]["code"] == "invalid_state", capture.text
    assert "voided" in capture.json()["error"]["message"]
    refund = sim.post(f"/v1/payments/{pid}/refund", json={}, headers={"Idempotency-Key": "r1"})
    assert refund.status_code == 409 and refund.json()["error"]["code"] == "invalid_state"
    twice = void(sim, pid, "v2")  # another key: the payment is no longer an authorization
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "invalid_state"
    assert sim.get(f"/v1/payments/{pid}").json()["status"] == "voided"

    assert void(sim, pid, None).json()["error"]["code"] == "idempotency_key_required"
    assert void(sim, "pay_nope", "v3").status_code == 404
    assert sim.get(f"/v1/payments/{pid}/void").status_code == 405
    stats = sim.get("/_stats").json()
    assert stats["void"] == 5 and stats["replayed"] == 1 and stats["conflicts"] == 1, stats


def test_only_an_authorization_can_be_voided(sim: httpx.Client) -> None:
    captured = authorize(sim, "p-cap").json()["id"]
    sim.post(f"/v1/payments/{captured}/capture", json={}, headers={"Idempotency-Key": "c1"}).raise_for_status()
    charged = sim.post("/v1/payments/authorize", json={"amount_minor": 900, "currency": "EUR", "capture": True},
                       headers={"Idempotency-Key": "p-one-step"}).json()["id"]
    refunded = authorize(sim, "p-ref").json()["id"]
    sim.post(f"/v1/payments/{refunded}/capture", json={}, headers={"Idempotency-Key": "c2"}).raise_for_status()
    sim.post(f"/v1/payments/{refunded}/refund", json={}, headers={"Idempotency-Key": "r"}).raise_for_status()
    declined = authorize(sim, "p-dec", reference="please-decline").json()["id"]
    for pid, status in [(captured, "captured"), (charged, "captured"), (refunded, "refunded"),
                        (declined, "declined")]:
        resp = void(sim, pid, f"v-{pid}")
        assert resp.status_code == 409, (status, resp.text)
        assert resp.json()["error"] == {"code": "invalid_state", "message": f"cannot void a {status} payment"}
        assert sim.get(f"/v1/payments/{pid}").json()["status"] == status  # unchanged


def test_failures_latency_and_outages_apply_to_voids(sim: httpx.Client) -> None:
    pid = authorize(sim, "a-fail").json()["id"]
    sim.put("/_config", json={"failure_rate": 1.0}).raise_for_status()
    failed = void(sim, pid, "v")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "temporarily_unavailable"
    sim.put("/_config", json={"failure_rate": 0.0, "down": True}).raise_for_status()
    assert void(sim, pid, "v").json()["error"]["code"] == "down"
    sim.put("/_config", json={"down": False}).raise_for_status()
    assert sim.get(f"/v1/payments/{pid}").json()["status"] == "authorized"  # neither call changed it
    sim.put("/_config", json={"latency_ms": 200, "capture_latency_ms": 3000}).raise_for_status()
    started = time.monotonic()
    ok = void(sim, pid, "v")  # a failure is not remembered: the same key may succeed
    took = time.monotonic() - started
    assert ok.status_code == 200 and "Idempotent-Replayed" not in ok.headers, ok.text
    assert 0.2 <= took < 2.0, took  # the call's latency, not a capture's
    stats = sim.get("/_stats").json()
    assert stats["void"] == 3 and stats["failed"] == 1 and stats["refused_down"] == 1, stats


def test_a_void_storm_times_out(sim: httpx.Client) -> None:
    pid = authorize(sim, "a-storm").json()["id"]
    sim.put("/_config", json={"storm": {"duration_s": 30, "mode": "timeout", "timeout_ms": 100}}).raise_for_status()
    assert void(sim, pid, "v").status_code == 504
    sim.put("/_config", json={"storm": None}).raise_for_status()
    assert void(sim, pid, "v").status_code == 200


def test_void_through_other_workers(simulator_url: str, sim: httpx.Client, workers: int) -> None:
    with clients_on_workers(simulator_url, 3) as clients:
        assert len(clients) == min(3, workers)
        first, second, third = (clients * 3)[:3]
        pid = authorize(first, "a-w").json()["id"]
        voided = void(second, pid, "v-w")
        assert voided.status_code == 200
        replay = void(third, pid, "v-w")
        assert replay.json() == voided.json() and replay.headers["Idempotent-Replayed"] == "true"
        assert first.post(f"/v1/payments/{pid}/capture", json={},
                          headers={"Idempotency-Key": "c-w"}).status_code == 409


async def test_a_void_racing_a_capture_one_of_them_wins(simulator_url: str, sim: httpx.Client) -> None:
    """Capture and void of one authorization at the same time (on different connections, so different
    workers with Redis): exactly one succeeds, and the payment ends in the winner's state."""
    sim.put("/_config", json={"latency_ms": 30}).raise_for_status()
    async with connections(simulator_url, 2) as (a, b):
        for i in range(8):
            pid = authorize(sim, f"a-race-{i}").json()["id"]
            cap, vd = await asyncio.gather(
                a.post(f"/v1/payments/{pid}/capture", json={}, headers={"Idempotency-Key": f"c-{i}"}),
                b.post(f"/v1/payments/{pid}/void", json={}, headers={"Idempotency-Key": f"v-{i}"}))
            assert sorted([cap.status_code, vd.status_code]) == [200, 409], (cap.text, vd.text)
            winner = "captured" if cap.status_code == 200 else "voided"
            assert sim.get(f"/v1/payments/{pid}").json()["status"] == winner


# --- the provider client and its guard ---------------------------------------------------------------

Factory = Callable[..., GuardedProvider]


@pytest.fixture
async def guarded(simulator_url: str, aredis: aioredis.Redis, breaker_key: str) -> AsyncIterator[Factory]:
    made: list[GuardedProvider] = []

    def make(*, attempts: int = 1, fail_max: int = 10) -> GuardedProvider:
        breaker = SharedBreaker("payments", redis=aredis, key=breaker_key, fail_max=fail_max, reset_timeout_s=10,
                                exclude=(PaymentDeclined, PaymentRejected))
        provider = GuardedProvider(SimulatorProvider(simulator_url), breaker=breaker,
                                   bulkhead=Bulkhead("payments", 8, 0.05), retry=RetryPolicy(attempts, 0.05, 0.2),
                                   timeout_s=2.0)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def test_void_through_the_guard(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded()
    auth = await p.authorize(idempotency_key="o-1:authorize", amount_minor=2500, currency="EUR", reference="o-1")
    voided = await p.void(idempotency_key="o-1:void", payment_id=auth.payment_id)
    assert (voided.payment_id, voided.status, voided.amount_minor, voided.currency) == \
        (auth.payment_id, "voided", 2500, "EUR")
    assert await p.void(idempotency_key="o-1:void", payment_id=auth.payment_id) == voided  # retried: same answer
    found = await p.find(idempotency_key="o-1:authorize")
    assert found is not None and found.status == "voided"
    with pytest.raises(PaymentRejected) as info:
        await p.capture(idempotency_key="o-1:capture", payment_id=auth.payment_id, amount_minor=2500)
    assert info.value.code == "invalid_state"
    with pytest.raises(PaymentRejected):
        await p.void(idempotency_key="o-1:void-again", payment_id=auth.payment_id)
    assert (await p.breaker.snapshot())["failures"] == 0  # refusals are answers, not faults


async def test_a_void_is_retried_like_a_refund(guarded: Factory, sim: httpx.Client) -> None:
    p = guarded(attempts=3)
    auth = await p.authorize(idempotency_key="o-2:authorize", amount_minor=700, currency="EUR", reference="o-2")
    sim.put("/_config", json={"failure_rate": 1.0}).raise_for_status()
    with pytest.raises(ProviderUnavailable):
        await p.void(idempotency_key="o-2:void", payment_id=auth.payment_id)
    assert sim.get("/_stats").json()["void"] == 3  # every attempt reached the provider
    assert (await p.breaker.snapshot())["failures"] >= 1
    sim.put("/_config", json={"failure_rate": 0.0}).raise_for_status()
    assert (await p.void(idempotency_key="o-2:void", payment_id=auth.payment_id)).status == "voided"


# --- checkout (two-step payments) against the session's simulator --------------------------------------

@pytest.fixture
def provider_sim(payment_simulator: str) -> Iterator[httpx.Client]:
    """The simulator the gateway app pays through (not this module's own), reset before and after."""
    with httpx.Client(base_url=payment_simulator, timeout=5) as control:
        control.post("/_reset").raise_for_status()
        yield control
        control.post("/_reset").raise_for_status()


async def checkout_with_refused_capture(client: httpx.AsyncClient, app, database_url: str, provider_sim: httpx.Client,
                                        monkeypatch: pytest.MonkeyPatch, *, void_fails: bool
                                        ) -> tuple[httpx.Response, dict]:
    """A two-step checkout whose capture the provider refuses for good (it is sent for one cent more than
    was authorized: 409 invalid_state); with `void_fails`, the provider goes down right after that refusal.
    Returns the buyer's answer and the key's record."""
    _, api_key = await new_org(database_url)
    event = await open_event(client, api_key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
    assert hold.status_code == 201, hold.text
    checkout = app.gateway.checkout
    monkeypatch.setattr(checkout, "capture_on_authorize", False)
    real_capture = checkout.provider.capture

    async def capture(*, idempotency_key: str, payment_id: str, amount_minor: int, **kw):
        try:
            return await real_capture(idempotency_key=idempotency_key, payment_id=payment_id,
                                      amount_minor=amount_minor + 1, **kw)
        finally:
            if void_fails:
                await asyncio.to_thread(provider_sim.put, "/_config", json={"down": True})

    monkeypatch.setattr(checkout.provider, "capture", capture)
    resp = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                             headers={**me, "Idempotency-Key": "k-refused-capture"})
    provider_sim.put("/_config", json={"down": False}).raise_for_status()
    runtime = app.gateway.runtime
    records = await runtime.redis.hgetall(checkout_records(runtime.prefix, event["id"]))
    [record] = [orjson.loads(v) for f, v in records.items() if f.decode().endswith("|k-refused-capture")]
    return resp, record


@pytest.mark.parametrize("void_fails", [False, True])
async def test_an_authorization_whose_capture_is_refused_is_voided(client, app, database_url, provider_sim,
                                                                  monkeypatch, void_fails):
    """The buyer is told the capture's refusal either way; the authorization is released at once, and a
    void that fails changes nothing of the answer (the authorization then lapses at the provider)."""
    resp, record = await checkout_with_refused_capture(client, app, database_url, provider_sim, monkeypatch,
                                                       void_fails=void_fails)
    expected = {"code": "invalid_state",
                "message": "The payment provider refused the operation: cannot capture a authorized payment",
                "details": {"provider_code": "invalid_state"}}
    assert resp.status_code == 409, resp.text
    assert {k: resp.json()["error"].get(k) for k in expected} == expected, resp.text
    assert record["state"] == "failed" and record["error"] == expected, record  # the key's answer, for good

    payment = provider_sim.get("/v1/payments", params={"idempotency_key": f"{record['order_id']}:authorize"}).json()
    stats = provider_sim.get("/_stats").json()
    assert stats["authorized"] == 1 and stats["capture"] == 1 and not stats.get("refund"), stats
    if void_fails:
        assert stats["refused_down"] >= 1 and payment["status"] == "authorized", (stats, payment)
    else:
        assert stats["void"] == 1 and payment["status"] == "voided", (stats, payment)
        replayed = provider_sim.post(f"/v1/payments/{payment['id']}/void", json={},
                                     headers={"Idempotency-Key": f"{record['order_id']}:void"})
        assert replayed.headers.get("Idempotent-Replayed") == "true", "the void's key is derived from the order"


async def authorization_left_by_a_dead_checkout(client: httpx.AsyncClient, app, database_url: str,
                                                monkeypatch: pytest.MonkeyPatch, key: str) -> tuple[int, bytes, str]:
    """A two-step checkout that died at its capture (an authorization only at the provider), whose hold is
    then swept. Returns (event id, the key's record field, the records hash)."""
    from gateway.sale import checkout as checkout_module
    from gateway.sale import inventory

    _, api_key = await new_org(database_url)
    event = await open_event(client, api_key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["hold_id"]

    async def dies(**kwargs):
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patch:
        patch.setattr(app.gateway.checkout, "capture_on_authorize", False)
        patch.setattr(app.gateway.checkout.provider, "capture", dies)
        resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers={**me, "Idempotency-Key": key})
        assert resp.status_code == 500, resp.text
    monkeypatch.setattr(checkout_module, "STARTED_STALE_S", 0.0)  # no need to wait for the attempt's lock to age
    runtime = app.gateway.runtime
    await runtime.redis.zadd(f"{runtime.prefix}:{{ev:{event['id']}}}:holds", {hold_id: 1})
    await inventory.expire(scripts=runtime.scripts, prefix=runtime.prefix, event_id=event["id"])
    records = checkout_records(runtime.prefix, event["id"])
    [field] = [f for f in await runtime.redis.hkeys(records) if f.endswith(f"|{key}".encode())]
    assert orjson.loads(await runtime.redis.hget(records, field))["state"] == "started"
    return event["id"], field, records


async def test_recovery_voids_an_authorization_asks_again_while_the_provider_fails(client, app, database_url,
                                                                                  provider_sim, monkeypatch):
    from gateway.sale.checkout import CheckoutRecovery

    event_id, field, records = await authorization_left_by_a_dead_checkout(client, app, database_url, monkeypatch,
                                                                           "k-void-later")
    redis = app.gateway.runtime.redis
    order_id = orjson.loads(await redis.hget(records, field))["order_id"]
    service = CheckoutRecovery(redis=redis, provider=app.gateway.payments, prefix=app.gateway.runtime.prefix)
    real_void = app.gateway.payments.void

    async def void_while_down(**kw):  # the provider goes down between the lookup and the void
        await asyncio.to_thread(provider_sim.put, "/_config", json={"down": True})
        return await real_void(**kw)

    monkeypatch.setattr(app.gateway.payments, "void", void_while_down)
    assert await service.recover(event_id, min_age_s=0) == 0
    assert orjson.loads(await redis.hget(records, field))["state"] == "started", "not settled: asked again later"
    provider_sim.put("/_config", json={"down": False}).raise_for_status()
    monkeypatch.setattr(app.gateway.payments, "void", real_void)
    payment = provider_sim.get("/v1/payments", params={"idempotency_key": f"{order_id}:authorize"}).json()
    assert payment["status"] == "authorized"

    assert await service.recover(event_id, min_age_s=0) == 0
    record = orjson.loads(await redis.hget(records, field))
    assert record["state"] == "failed" and record["error"]["details"]["refunded"] is False, record
    assert record["payment_id"] == payment["id"]
    payment = provider_sim.get("/v1/payments", params={"idempotency_key": f"{order_id}:authorize"}).json()
    assert payment["status"] == "voided" and payment["captured_minor"] == 0, payment
    stats = provider_sim.get("/_stats").json()
    assert not stats.get("capture") and not stats.get("refund"), stats
    await service.recover(event_id, min_age_s=0)
    assert provider_sim.get("/_stats").json().get("void") == stats.get("void"), "a settled record is not voided again"


async def test_recovery_settles_when_the_provider_refuses_the_void(client, app, database_url, provider_sim,
                                                                   monkeypatch):
    """A void refused for good (here: sent for a payment the provider does not know) is logged; the key is
    settled as for any authorization (no money taken), and the authorization is left to lapse."""
    from gateway.sale.checkout import CheckoutRecovery

    event_id, field, records = await authorization_left_by_a_dead_checkout(client, app, database_url, monkeypatch,
                                                                           "k-void-refused")
    redis = app.gateway.runtime.redis
    order_id = orjson.loads(await redis.hget(records, field))["order_id"]
    real_void = app.gateway.payments.void

    async def void_unknown(*, idempotency_key: str, payment_id: str, **kw):
        return await real_void(idempotency_key=idempotency_key, payment_id="pay_unknown", **kw)

    monkeypatch.setattr(app.gateway.payments, "void", void_unknown)
    service = CheckoutRecovery(redis=redis, provider=app.gateway.payments, prefix=app.gateway.runtime.prefix)
    assert await service.recover(event_id, min_age_s=0) == 0
    record = orjson.loads(await redis.hget(records, field))
    assert record["state"] == "failed" and record["error"]["details"]["refunded"] is False, record
    payment = provider_sim.get("/v1/payments", params={"idempotency_key": f"{order_id}:authorize"}).json()
    assert payment["status"] == "authorized" and provider_sim.get("/_stats").json()["void"] == 1
