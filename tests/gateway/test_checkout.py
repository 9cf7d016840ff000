"""Checkout over the API with the payment simulator as a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gateway.orders import ticketcodes
from gateway.store.keys import event_key
from gateway.workers.ledger import LedgerWorker
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def event(client, database_url, sim):
    _, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(ga={"floor": 20}, limit=8))
    ev["api_key"] = key
    return ev


async def hold(client, event, headers, body=None):
    resp = await client.post(f"/v1/events/{event['id']}/holds", json=body or {"seats": ["A-1-1", "A-1-2"]},
                             headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def checkout(client, hold_id, headers, key="key-00000001", body=None):
    return await client.post(f"/v1/holds/{hold_id}/checkout", json=body or {"email": "fan@example.org"},
                             headers={**headers, "Idempotency-Key": key})


async def drain_ledger(app):
    worker = LedgerWorker(app.gateway.runtime, consumer="test")
    while await worker.step():
        pass


async def test_checkout_issues_verifiable_tickets(client, event, app, redis_sync, settings, pg):
    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["A-1-1", "A-1-2"]})
    resp = await checkout(client, h["hold_id"], me)
    assert resp.status_code == 201, resp.text
    order = resp.json()
    assert order["status"] == "paid" and order["total_minor"] == 10000 and order["currency"] == "EUR"
    assert [t["seat"] for t in order["tickets"]] == ["A-1-1", "A-1-2"]
    public = redis_sync.hget(event_key(settings.redis_prefix, event["id"], "info"), "signing_public")
    for t in order["tickets"]:
        claims = ticketcodes.verify(t["code"], {1: public})
        assert claims.event_id == event["id"] and claims.serial == t["serial"]
    # The buyer reads the order with the order token, before and after the ledger wrote it.
    url = f"/v1/orders/{order['order_id']}"
    before = await client.get(url, headers=auth(order["order_token"]))
    assert before.status_code == 200 and [t["code"] for t in before.json()["tickets"]] == \
        [t["code"] for t in order["tickets"]]
    await drain_ledger(app)
    after = await client.get(url, headers=auth(order["order_token"]))
    assert after.json()["status"] == "paid" and [t["code"] for t in after.json()["tickets"]] == \
        [t["code"] for t in order["tickets"]]
    assert await pg.fetchval("SELECT count(*) FROM tickets WHERE order_id = $1::uuid", order["order_id"]) == 2
    page = await client.get(after.json()["order_page_url"])
    assert page.status_code == 200 and page.text.count("<svg") == 2
    other = await client.get(url, headers=auth(order["order_token"][:-3] + "AAA"))
    assert other.status_code == 401


async def test_same_key_same_order_even_concurrently(client, event, sim):
    me = await buyer(client)
    h = await hold(client, event, me)
    responses = await asyncio.gather(*(checkout(client, h["hold_id"], me, key="same-key-123") for _ in range(8)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["order_id"] for r in responses}) == 1
    stats = sim.get("/_stats").json()
    assert stats.get("authorize", 0) == 1 and stats.get("captured", 0) == 1 and not stats.get("capture"), stats
    again = await checkout(client, h["hold_id"], me, key="same-key-123")
    assert again.json()["order_id"] == responses[0].json()["order_id"]


async def test_same_key_other_body_is_refused(client, event):
    me = await buyer(client)
    h = await hold(client, event, me)
    assert (await checkout(client, h["hold_id"], me, key="k-conflict")).status_code == 201
    resp = await checkout(client, h["hold_id"], me, key="k-conflict", body={"email": "other@example.org"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "idempotency_conflict"


async def test_bad_checkout_requests(client, event):
    me = await buyer(client)
    h = await hold(client, event, me)
    resp = await client.post(f"/v1/holds/{h['hold_id']}/checkout", json={}, headers=me)
    assert resp.status_code == 422 and "Idempotency-Key" in resp.json()["error"]["message"]
    resp = await checkout(client, h["hold_id"], me, body={"email": "not-an-address"})
    assert resp.status_code == 422
    resp = await checkout(client, h["hold_id"], me, body={"surprise": 1})
    assert resp.status_code == 422
    other = await buyer(client)
    resp = await checkout(client, h["hold_id"], other)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    resp = await checkout(client, f"{event['id']}-nope", me)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "hold_not_found"
    for i, method in enumerate(("x" * 100_000, {"x": [1, 2]}, 12345, True, ["a"], "card\r\nX-Injected: 1", "",
                                "Card")):
        resp = await checkout(client, h["hold_id"], me, body={"payment_method": method}, key=f"k-pm-{i:04d}")
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", resp.text
        assert "payment_method" in resp.json()["error"]["message"] and len(resp.text) < 500
    paid = await checkout(client, h["hold_id"], me, body={"payment_method": "card"}, key="k-pm-card")
    assert paid.status_code == 201, paid.text


async def test_decline_keeps_the_hold(client, event, sim):
    me = await buyer(client)
    h = await hold(client, event, me)
    resp = await checkout(client, h["hold_id"], me, key="k-decline-1", body={"payment_method": "decline-card"})
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "payment_declined"
    ok = await checkout(client, h["hold_id"], me, key="k-decline-2", body={"payment_method": "card"})
    assert ok.status_code == 201, ok.text


async def test_provider_down_answers_503_fast_and_keeps_holds_fast(client, event, sim):
    me = await buyer(client)
    h = await hold(client, event, me)
    sim.put("/_config", json={"down": True}).raise_for_status()
    started = time.monotonic()
    codes = []
    for i in range(8):
        resp = await checkout(client, h["hold_id"], me, key=f"k-down-{i:04d}")
        codes.append(resp.status_code)
        assert resp.json()["error"]["code"] == "payments_unavailable"
        assert int(resp.headers["retry-after"]) >= 1
    assert set(codes) == {503}
    assert time.monotonic() - started < 8 * 2.5, "each answer within the timeout budget"
    calls_when_open = sim.get("/_stats").json()
    t0 = time.monotonic()
    resp = await checkout(client, h["hold_id"], me, key="k-down-open")
    assert resp.status_code == 503 and time.monotonic() - t0 < 0.5, "an open breaker answers at once"
    assert sim.get("/_stats").json() == calls_when_open, "an open breaker does not call the provider"
    # Holds and availability are unaffected meanwhile.
    t0 = time.monotonic()
    other = await buyer(client)
    await hold(client, event, other, {"seats": ["B-2-2"]})
    assert (await client.get(f"/v1/events/{event['id']}/availability")).status_code == 200
    assert time.monotonic() - t0 < 1.0
    # Recovery: after the reset timeout the breaker lets a trial through and closes.
    sim.put("/_config", json={"down": False}).raise_for_status()
    await asyncio.sleep(1.2)
    ok = await checkout(client, h["hold_id"], me, key="k-after-recovery")
    assert ok.status_code == 201, ok.text


async def test_slow_provider_does_not_slow_holds(client, event, sim):
    sim.put("/_config", json={"latency_ms": 1500}).raise_for_status()
    buyers = [await buyer(client) for _ in range(6)]
    holds = [await hold(client, event, b, {"ga": {"floor": 1}}) for b in buyers]
    slow = [asyncio.create_task(checkout(client, h["hold_id"], b, key=f"slow-key-{i:03d}"))
            for i, (h, b) in enumerate(zip(holds, buyers))]
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    quick = await buyer(client)
    await hold(client, event, quick, {"seats": ["B-4-4"]})
    assert time.monotonic() - t0 < 0.5, "holds stay fast while payments are slow"
    results = await asyncio.gather(*slow)
    assert all(r.status_code in (201, 503) for r in results)


async def test_payment_for_an_expired_hold_is_refunded(client, event, sim, redis_sync, settings, app, pg):
    meta = event_key(settings.redis_prefix, event["id"], "meta")
    redis_sync.hset(meta, mapping={"hold_ttl_ms": 300, "checkout_ms": 300})
    sim.put("/_config", json={"latency_ms": 500}).raise_for_status()  # the payment outlasts the window
    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["B-5-9"]})
    resp = await checkout(client, h["hold_id"], me, key="k-expired-1")
    redis_sync.hset(meta, mapping={"hold_ttl_ms": 600000, "checkout_ms": 120000})
    assert resp.status_code == 409, resp.text
    err = resp.json()["error"]
    assert err["code"] == "hold_expired" and err["details"]["refunded"] is True
    stats = sim.get("/_stats").json()
    assert stats.get("captured") == 1 and stats.get("refund") == 1, stats
    await drain_ledger(app)
    rows = await pg.fetch("SELECT kind FROM payments WHERE hold_id = $1 ORDER BY kind", h["hold_id"])
    assert [r["kind"] for r in rows] == ["capture", "refund"]
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE hold_id = $1", h["hold_id"]) == 0


async def test_refund_returns_seats_and_voids_tickets(client, event, app, pg):
    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["B-3-3"]})
    order = (await checkout(client, h["hold_id"], me, key="k-refund-1")).json()
    await drain_ledger(app)
    key = event["api_key"]
    resp = await client.post(f"/v1/orders/{order['order_id']}/refund", json={"reason": "cancelled"},
                             headers=auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "refunded" and resp.json()["returned_to_sale"] == 1
    again = await client.post(f"/v1/orders/{order['order_id']}/refund", headers=auth(key))
    assert again.status_code == 200 and again.json()["returned_to_sale"] == 1
    await drain_ledger(app)
    assert await pg.fetchval("SELECT status FROM orders WHERE id = $1::uuid", order["order_id"]) == "refunded"
    assert await pg.fetchval("SELECT status FROM tickets WHERE order_id = $1::uuid", order["order_id"]) == "void"
    await asyncio.sleep(0.3)  # the availability snapshot learns of the void within its refresh interval
    other = await buyer(client)
    await hold(client, event, other, {"seats": ["B-3-3"]})
    _, stranger = await new_org(app.gateway.runtime.settings.database_url)
    resp = await client.post(f"/v1/orders/{order['order_id']}/refund", headers=auth(stranger))
    assert resp.status_code == 404
    listed = await client.get(f"/v1/events/{event['id']}/orders", headers=auth(key))
    assert order["order_id"] in [o["order_id"] for o in listed.json()["orders"]]


def confirm_lost_after_record(app):
    """Fault injection: the "paid" record reaches Redis, then the connection dies before confirm."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    redis = app.gateway.runtime.redis

    async def call_after(command, name, keys, args):
        await redis.execute_command(*command)
        raise RedisConnectionError("connection lost")

    return call_after


async def test_redis_failing_between_payment_and_confirm(client, event, app, sim, monkeypatch, redis_sync, settings):
    """Paid, then Redis fails at confirm: the buyer is told to retry with the same key. If the hold
    then ends without a retry, recovery refunds the payment; a retry afterwards gets that answer."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.sale import checkout as checkout_module

    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["B-1-1"]})
    monkeypatch.setattr(app.gateway.checkout.scripts, "call_after", confirm_lost_after_record(app))
    resp = await checkout(client, h["hold_id"], me, key="k-redis-gone")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable", resp.text
    monkeypatch.undo()
    assert sim.get("/_stats").json().get("captured") == 1
    from gateway.sale.checkout import CheckoutRecovery

    service = CheckoutRecovery(redis=app.gateway.runtime.redis, provider=app.gateway.payments,
                               prefix=settings.redis_prefix)
    assert await service.recover(event["id"], min_age_s=0) == 0, "the hold still lives: no refund yet"
    # The hold ends (expiry passes) without the buyer coming back.
    redis_sync.zadd(f"{settings.redis_prefix}:{{ev:{event['id']}}}:holds", {h["hold_id"]: 1})
    from gateway.sale import inventory
    await inventory.expire(scripts=app.gateway.runtime.scripts, prefix=settings.redis_prefix,
                           event_id=event["id"])
    assert await service.recover(event["id"], min_age_s=0) == 1
    assert sim.get("/_stats").json().get("refund") == 1
    again = await checkout(client, h["hold_id"], me, key="k-redis-gone")
    assert again.status_code == 409 and again.json()["error"]["details"]["refunded"] is True
    assert await service.recover(event["id"], min_age_s=0) == 0, "refunded once only"


@pytest.mark.parametrize("dies_in", ["authorize", "capture"])
async def test_a_checkout_that_died_before_taking_money_is_settled_without_refund(client, event, app, sim, monkeypatch,
                                                                                 redis_sync, settings, dies_in):
    """The process dies at `authorize` (nothing at the provider) or at `capture` (an authorization only):
    once the hold is gone, recovery asks the provider, takes nothing, refunds nothing, and the key says so."""
    import orjson

    from gateway.sale import checkout as checkout_module
    from gateway.sale import inventory
    from gateway.sale.checkout import CheckoutRecovery

    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["B-1-3"]})

    async def dies(**kwargs):
        raise RuntimeError("the process died here")

    if dies_in == "capture":  # an authorization without capture exists only with the two-step setting
        monkeypatch.setattr(app.gateway.checkout, "capture_on_authorize", False)

    monkeypatch.setattr(app.gateway.checkout.provider, dies_in, dies)
    assert (await checkout(client, h["hold_id"], me, key="k-died-early")).status_code == 500
    monkeypatch.undo()
    monkeypatch.setattr(checkout_module, "STARTED_STALE_S", 0.0)  # no need to wait for the attempt's lock to age
    records = f"{settings.redis_prefix}:{{ev:{event['id']}}}:checkouts"
    [field] = [f for f in redis_sync.hkeys(records) if f.endswith(b"|k-died-early")]
    assert orjson.loads(redis_sync.hget(records, field))["state"] == "started"
    service = CheckoutRecovery(redis=app.gateway.runtime.redis, provider=app.gateway.payments,
                               prefix=settings.redis_prefix)
    await service.recover(event["id"], min_age_s=0)
    assert orjson.loads(redis_sync.hget(records, field))["state"] == "started", "the hold is still paying"

    redis_sync.zadd(f"{settings.redis_prefix}:{{ev:{event['id']}}}:holds", {h["hold_id"]: 1})
    await inventory.expire(scripts=app.gateway.runtime.scripts, prefix=settings.redis_prefix, event_id=event["id"])
    early = await checkout(client, h["hold_id"], me, key="k-died-early")
    assert early.status_code == 409 and early.json()["error"]["code"] == "hold_expired", early.text
    assert orjson.loads(redis_sync.hget(records, field))["state"] == "started", \
        "a retry records nothing: only recovery can tell whether money was taken"
    assert await service.recover(event["id"], min_age_s=0) == 0
    record = orjson.loads(redis_sync.hget(records, field))
    assert record["state"] == "failed" and record["error"]["details"]["refunded"] is False, record
    stats = sim.get("/_stats").json()
    assert stats.get("authorized", 0) == (1 if dies_in == "capture" else 0), stats
    assert not stats.get("capture") and not stats.get("refund"), "no money taken, none given back"
    payment = sim.get("/v1/payments", params={"idempotency_key": f"{record['order_id']}:authorize"})
    if dies_in == "capture":  # released: voided, never captured to be refunded
        assert payment.json()["status"] == "voided" and stats.get("void") == 1, (payment.text, stats)
    else:
        assert payment.status_code == 404
    again = await checkout(client, h["hold_id"], me, key="k-died-early")
    assert again.status_code == 409 and again.json()["error"]["details"]["refunded"] is False, again.text


async def test_a_retry_after_redis_failure_completes_the_order(client, event, app, sim, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.sale import checkout as checkout_module

    me = await buyer(client)
    h = await hold(client, event, me, {"seats": ["B-1-2"]})
    monkeypatch.setattr(app.gateway.checkout.scripts, "call_after", confirm_lost_after_record(app))
    assert (await checkout(client, h["hold_id"], me, key="k-retry-ok")).status_code == 503
    monkeypatch.undo()
    ok = await checkout(client, h["hold_id"], me, key="k-retry-ok")
    assert ok.status_code == 201, ok.text
    stats = sim.get("/_stats").json()
    assert stats.get("captured") == 1 and stats.get("replayed") == 1 and not stats.get("refund"), \
        "the retry replays the same payment (idempotency keys), never a second one"


async def test_a_declined_payment_does_not_keep_the_seats_off_sale(client, app, database_url, settings, redis_sync,
                                                                  sim):
    """A declined card gives the hold its own expiry back (not the 120 s payment window): a 5 s hold
    is back on sale about 5 s after it was taken, however many attempts were declined."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 3}, ttl=5))
    me = await buyer(client)
    h = await hold(client, event, me, {"ga": {"floor": 1}})
    for attempt in range(3):
        resp = await checkout(client, h["hold_id"], me, key=f"k-declined-{attempt}",
                              body={"payment_method": "decline-card"})
        assert resp.status_code == 402, resp.text
    score = redis_sync.zscore(event_key(settings.redis_prefix, event["id"], "holds"), h["hold_id"])
    assert int(score) == h["expires_at_ms"], "each declined attempt restored the hold's own expiry"
    from gateway.sale import inventory

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # what the expiry worker does every 200 ms
        await inventory.expire(scripts=app.gateway.runtime.scripts, prefix=settings.redis_prefix, event_id=event["id"])
        avail = (await client.get(f"/v1/events/{event['id']}/availability", params={"seats": 0})).json()
        if avail["ga"][0]["available"] == 3:
            break
        await asyncio.sleep(0.2)
    assert avail["ga"][0]["available"] == 3, "the ticket came back on sale at the hold's own expiry"
    assert time.time() * 1000 < h["expires_at_ms"] + 6000


async def test_an_expired_hold_answers_hold_expired(client, database_url, settings, redis_sync, sim):
    """After the expiry sweep removed a hold, checkout and release still say 409 hold_expired (a
    tombstone), not 404 — the contract's answer for a hold that ran out."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 3}, ttl=5))
    me = await buyer(client)
    h = await hold(client, event, me, {"ga": {"floor": 1}})
    redis_sync.zadd(event_key(settings.redis_prefix, event["id"], "holds"), {h["hold_id"]: 1})  # time is up
    from gateway.sale import inventory
    from gateway.store.scripts import Scripts
    from gateway.store.redis import redis_client

    client_ = redis_client(settings.redis_url)
    try:
        swept = await inventory.expire(scripts=Scripts(client_), prefix=settings.redis_prefix, event_id=event["id"])
    finally:
        await client_.aclose()
    assert swept["expired"] == 1
    resp = await checkout(client, h["hold_id"], me, key="k-after-expiry")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "hold_expired", resp.text
    gone = await client.delete(f"/v1/holds/{h['hold_id']}", headers=me)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "hold_expired", gone.text
    never = await client.delete(f"/v1/holds/{event['id']}-0000", headers=me)
    assert never.status_code == 404


async def test_a_purchase_costs_two_script_calls(settings, database_url, sim, tmp_path):
    """Redis round trips of one purchase: checkout_begin before the payment, the paid record and
    checkout_confirm in one write after it, and one SADD to wake the ledger (docs/checkout.md)."""
    from gateway.stack.embedded import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        async with gateway_client(settings.model_copy(update={"redis_url": server.url, "redis_prefix": "rt"})) as c:
            _, key = await new_org(database_url)
            event = await open_event(c, key, seat_spec(ga={"floor": 5}))
            me = await buyer(c)
            h = await hold(c, event, me, {"ga": {"floor": 1}})
            await asyncio.sleep(0.3)  # snapshot loaded, first reads cached
            with commands_sent(server.url) as sent:
                resp = await checkout(c, h["hold_id"], me, key="k-round-trips", body={"payment_method": "card"})
                await asyncio.sleep(0.2)
        assert resp.status_code == 201, resp.text
        counted = ("evalsha", "hset", "hget", "hsetnx", "set", "get", "del", "sadd", "xadd", "eval")
        used = {name: n for name, n in sent.items() if name in counted}
        assert used == {"evalsha": 2, "hset": 1, "sadd": 1}, sorted(sent.items())
    finally:
        server.stop()


@pytest.mark.parametrize("one_step", [True, False])
async def test_a_purchase_is_one_provider_call(settings, database_url, sim, one_step):
    """The payment of one purchase is one call to the provider (authorize with capture), or authorize +
    capture with FLASHGATE_PAYMENTS_CAPTURE_ON_AUTHORIZE off; the order is paid either way, and a
    retry with the key never reaches the provider again."""
    payments = settings.payments.model_copy(update={"capture_on_authorize": one_step})
    async with gateway_client(settings.model_copy(update={"payments": payments})) as c:
        _, key = await new_org(database_url)
        event = await open_event(c, key, seat_spec(ga={"floor": 5}))
        me = await buyer(c)
        h = await hold(c, event, me, {"ga": {"floor": 2}})
        sim.post("/_reset").raise_for_status()
        resp = await checkout(c, h["hold_id"], me, key="k-one-call", body={"payment_method": "card"})
        assert resp.status_code == 201, resp.text
        calls = sim.get("/_stats").json()
        again = await checkout(c, h["hold_id"], me, key="k-one-call", body={"payment_method": "card"})
        assert again.json()["order_id"] == resp.json()["order_id"]
        assert sim.get("/_stats").json() == calls  # the retry with the key never reaches the provider
    made = {k: v for k, v in calls.items() if k in ("authorize", "capture")}
    assert made == ({"authorize": 1} if one_step else {"authorize": 1, "capture": 1}), calls
    assert calls.get("captured" if one_step else "authorized") == 1, calls


@contextlib.asynccontextmanager
async def gateway_client(settings):
    """A client of a whole gateway app (edge and framework) built from `settings`, in this process."""
    import httpx

    from gateway.api.app import create_app

    app = create_app(settings)
    async with app.fastapi.router.lifespan_context(app.fastapi):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


@contextlib.contextmanager
def commands_sent(url: str):
    """Commands clients sent to Redis while the block ran (MONITOR; commands run inside scripts are
    left out), by name."""
    import threading

    import redis

    counts: dict[str, int] = {}
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        r = redis.Redis.from_url(url)
        try:
            with r.monitor() as m:
                ready.set()
                for entry in m.listen():
                    if stop.is_set():
                        break
                    if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
                        continue
                    if "queue_mode" in entry["command"]:  # the waiting-room cache's background refresh
                        continue
                    if ":pacing:" in entry["command"]:  # each worker's pacing figures, published every second
                        continue
                    name = entry["command"].split(" ", 1)[0].strip('"').lower()
                    counts[name] = counts.get(name, 0) + 1
        finally:
            r.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.05)
    try:
        yield counts
    finally:
        stop.set()
        redis.Redis.from_url(url).ping()  # one more line so the watcher sees `stop`
        thread.join(5)


async def test_a_lock_left_by_an_interrupted_attempt_never_hangs_a_retry(app, client, event, settings, sim):
    """An attempt interrupted by a Redis stall cannot let go of its lock. A retry with the same key answers
    within a few seconds — `503 busy` with Retry-After while the lock lives — and pays once it has expired."""
    import redis.asyncio as aioredis

    from gateway.sale.checkout import LOCK_MS, WAIT_FOR_OTHER_S, checkout_keys
    from gateway.sale.holds import event_of_hold

    me = await buyer(client)
    h = await hold(client, event, me)
    buyer_id = app.gateway.signer.verify(me["Authorization"].split()[1], "b")["sub"]
    lock = checkout_keys(settings.redis_prefix, event_of_hold(h["hold_id"]), f"{buyer_id}|stalled-key-1")[-2]
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        await redis.set(lock, "an-attempt-that-died", px=LOCK_MS)
        t0 = time.monotonic()
        resp = await checkout(client, h["hold_id"], me, key="stalled-key-1")
        waited = time.monotonic() - t0
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "busy" and resp.headers["Retry-After"]
        assert waited < WAIT_FOR_OTHER_S + 1.5, waited
        await redis.pexpire(lock, 300)  # the lock runs out
        resp = await checkout(client, h["hold_id"], me, key="stalled-key-1")
        assert resp.status_code == 201 and resp.json()["status"] == "paid"
    finally:
        await redis.aclose()
