"""`GET /v1/events/{id}/stats`: the organiser's figures after sales made through the real API
(in-process app, real Redis, real Postgres, the payment simulator as a real HTTP server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.organisers.live import seat_states
from gateway.store.keys import event_key, live_keys
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def event(client, database_url, sim):
    org, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(sections=2, rows=5, seats=10, ga={"floor": 20}, limit=8))
    ev["api_key"], ev["org"] = key, org
    return ev


async def hold(client, event_id, headers, body):
    resp = await client.post(f"/v1/events/{event_id}/holds", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def pay(client, hold_id, headers, key):
    resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={"email": "fan@example.org"},
                             headers={**headers, "Idempotency-Key": key})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def stats(client, event):
    resp = await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_figures_follow_holds_sales_and_releases(client, event):
    eid = event["id"]
    empty = await stats(client, event)
    assert empty["totals"] == {"capacity": 120, "sold": 0, "held": 0, "available": 120}
    assert empty["revenue"]["gross_minor"] == 0 and empty["funnel"]["holds"] == 0
    assert empty["scans"]["inside"] == 0 and empty["status"] == "on_sale"

    a, b, c = await buyer(client), await buyer(client), await buyer(client)
    # a: 3 seats in A (row 1, price 5000) paid; b: 2 GA paid; c: 2 seats in B held, 1 seat in B released
    h1 = await hold(client, eid, a, {"seats": ["A-1-1", "A-1-2", "A-3-1"]})
    h2 = await hold(client, eid, b, {"ga": {"floor": 2}})
    await hold(client, eid, c, {"seats": ["B-1-1", "B-1-2"]})
    h4 = await hold(client, eid, c, {"seats": ["B-2-5"]})
    o1 = await pay(client, h1["hold_id"], a, "key-a-0001")
    o2 = await pay(client, h2["hold_id"], b, "key-b-0001")
    assert (await client.delete(f"/v1/holds/{h4['hold_id']}", headers=c)).status_code in (200, 204)

    f = await stats(client, event)
    sections = {s["name"]: s for s in f["sections"]}
    assert sections["A"] == {"name": "A", "capacity": 50, "sold": 3, "held": 0, "available": 47}
    assert sections["B"] == {"name": "B", "capacity": 50, "sold": 0, "held": 2, "available": 48}
    assert f["ga"] == [{"type": "floor", "name": "Floor", "capacity": 20, "sold": 2, "held": 0, "available": 18}]
    assert f["totals"] == {"capacity": 120, "sold": 5, "held": 2, "available": 113}
    total = o1["total_minor"] + o2["total_minor"]
    assert total == 5000 + 5000 + 3000 + 2 * 2500
    assert f["revenue"] == {"currency": "EUR", "gross_minor": total, "refunded_minor": 0, "net_minor": total,
                            "orders": 2, "refunds": 0}
    funnel = f["funnel"]
    assert (funnel["holds"], funnel["paid"], funnel["in_progress"]) == (4, 2, 1)
    assert funnel["dropped"]["released"] == 1 and funnel["dropped"]["expired"] == 0
    assert funnel["admitted"] is None  # no waiting room for this event
    assert funnel["holds"] == funnel["paid"] + funnel["in_progress"] + funnel["dropped"]["released"] + \
        funnel["dropped"]["expired"]
    assert funnel["tickets"] == {"held": 8, "paid": 5, "expired": 0, "released": 1, "refunded": 0}
    # this minute's bucket holds the 5 tickets and both orders
    now = f["sales"]["per_minute"][-1]
    assert now["minute"] == int(time.time() // 60) * 60_000 or now["minute"] == (int(time.time() // 60) - 1) * 60_000
    assert sum(m["tickets"] for m in f["sales"]["per_minute"]) == 5
    assert sum(m["revenue_minor"] for m in f["sales"]["per_minute"]) == total
    assert f["sales"]["tickets_per_minute"] > 0 and f["sales"]["tickets_sold_total"] == 5
    assert f["providers"]["payments"]["breaker"]["state"] == "closed"
    assert f["dead_letters"] == {"notifications": 0, "ledger": 0}
    assert f["queue"]["enabled"] is False and f["admission"]["queue_enabled"] is False


async def test_refund_lowers_revenue_and_sold(client, event, database_url):
    me = await buyer(client)
    h = await hold(client, event["id"], me, {"seats": ["A-2-1", "A-2-2"]})
    order = await pay(client, h["hold_id"], me, "key-refund-01")
    # the refund reads the order from Postgres: let the ledger write it first
    from gateway.workers.ledger import LedgerWorker
    worker = LedgerWorker(client._transport.app.gateway.runtime, consumer="test")  # type: ignore[attr-defined]
    while await worker.step():
        pass
    resp = await client.post(f"/v1/orders/{order['order_id']}/refund", json={"reason": "test"},
                             headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    f = await stats(client, event)
    assert f["totals"]["sold"] == 0 and f["totals"]["available"] == 120
    assert f["revenue"]["gross_minor"] == 10000 and f["revenue"]["refunded_minor"] == 10000
    assert f["revenue"]["net_minor"] == 0 and f["revenue"]["refunds"] == 1
    assert f["funnel"]["refunded"] == 1 and f["funnel"]["tickets"]["refunded"] == 2


async def test_fold_counts_each_record_once_under_concurrent_readers(client, event, app, redis_sync, settings):
    """Many figure reads at the same time as many sales: every hold is counted once."""
    eid = event["id"]
    buyers = [await buyer(client) for _ in range(12)]
    live = app.gateway.live

    async def sell(i):
        h = await hold(client, eid, buyers[i], {"seats": [f"{'AB'[i % 2]}-{i // 2 % 5 + 1}-{i // 10 + 1}"]})
        await pay(client, h["hold_id"], buyers[i], f"key-conc-{i:04d}")

    async def read(n):
        for _ in range(n):
            await live.fold(eid)

    await asyncio.gather(*(sell(i) for i in range(12)), *(read(15) for _ in range(4)))
    f = await stats(client, event)
    assert f["funnel"]["holds"] == 12 and f["funnel"]["paid"] == 12 and f["revenue"]["orders"] == 12
    assert f["totals"]["sold"] == 12
    changes = redis_sync.xlen(live_keys(settings.redis_prefix, eid)[0])
    assert int(redis_sync.hget(event_key(settings.redis_prefix, eid, "live"), "holds")) + \
        int(redis_sync.hget(event_key(settings.redis_prefix, eid, "live"), "sold")) == changes


async def test_bad_requests_get_the_common_error_shape(client, event, database_url):
    eid = event["id"]
    _, other_key = await new_org(database_url)
    other = await open_event(client, other_key, seat_spec(sections=1, rows=1, seats=2))
    for path in (f"/v1/events/{eid}/stats", f"/v1/events/{eid}/live"):
        missing = await client.get(path)
        assert missing.status_code == 401 and missing.json()["error"]["code"] in ("unauthorized", "invalid_token")
        wrong = await client.get(path, headers=auth("fgk_not-a-key"))
        assert wrong.status_code == 401
    for eid_, key in ((999_999_999, event["api_key"]), (other["id"], event["api_key"]), (eid, other_key)):
        for kind in ("stats", "live"):
            resp = await client.get(f"/v1/events/{eid_}/{kind}", headers=auth(key))
            assert resp.status_code == 404, resp.text
            body = resp.json()["error"]
            assert body["code"] == "event_not_found" and body["message"] and "details" in body
    for bad in ("0", "abc", "99999999999999999999999"):
        resp = await client.get(f"/v1/events/{bad}/stats", headers=auth(event["api_key"]))
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error"
    resp = await client.get(f"/v1/events/{eid}/live", headers={**auth(event["api_key"]), "Last-Event-ID": "yesterday"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error"


async def test_draft_event_has_figures_without_inventory_in_redis(client, database_url):
    _, key = await new_org(database_url)
    resp = await client.post("/v1/events", json=seat_spec(sections=1, rows=2, seats=3), headers=auth(key))
    draft = resp.json()
    f = (await client.get(f"/v1/events/{draft['id']}/stats", headers=auth(key))).json()
    assert f["status"] == "draft" and f["totals"] == {"capacity": 6, "sold": 0, "held": 0, "available": 6}


def test_seat_states_reads_redis_bit_order():
    # Redis bit i is bit (7 - i % 8) of byte i // 8
    sold, held = bytes([0b10000000, 0b00000001]), bytes([0b01000000, 0])
    assert seat_states(sold, held, 16) == "21" + "0" * 13 + "2"
    assert seat_states(None, None, 3) == "000"


async def test_sales_keys_read_the_figures_door_keys_do_not(client, event):
    made = {}
    for role in ("sales", "door"):
        resp = await client.post("/v1/keys", json={"name": f"{role} desk", "role": role},
                                 headers=auth(event["api_key"]))
        assert resp.status_code == 201, resp.text
        made[role] = resp.json()["key"]
    for kind in ("stats", "live"):
        assert (await client.get(f"/v1/events/{event['id']}/{kind}", headers=auth(made["door"]))).status_code == 403
    ok = await client.get(f"/v1/events/{event['id']}/stats", headers=auth(made["sales"]))
    assert ok.status_code == 200 and ok.json()["event_id"] == event["id"]


async def test_totals_are_folded_even_when_nobody_reads_the_figures(client, event, redis_sync, settings):
    """Each worker folds the streams of events on sale every few seconds, so the running totals do not
    depend on a dashboard being open (the change stream trims its oldest records)."""
    me = await buyer(client)
    h = await hold(client, event["id"], me, {"seats": ["B-5-1", "B-5-2"]})
    await pay(client, h["hold_id"], me, "key-unwatched-1")
    live = event_key(settings.redis_prefix, event["id"], "live")
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and redis_sync.hget(live, "orders") != b"1":
        await asyncio.sleep(0.2)
    assert redis_sync.hget(live, "orders") == b"1" and redis_sync.hget(live, "revenue") == b"6000"
    assert redis_sync.hget(live, "holds") == b"1" and redis_sync.hget(live, "sold:tickets") == b"2"


async def test_provider_health_follows_the_shared_breaker_and_pacing(client, event, sim):
    me = await buyer(client)
    h = await hold(client, event["id"], me, {"seats": ["A-5-9"]})
    sim.put("/_config", json={"down": True}).raise_for_status()
    try:
        for i in range(8):
            resp = await client.post(f"/v1/holds/{h['hold_id']}/checkout", json={},
                                     headers={**me, "Idempotency-Key": f"key-down-{i:04d}"})
            assert resp.status_code == 503
        f = await stats(client, event)
        assert f["providers"]["payments"]["breaker"]["state"] == "open"
        assert f["providers"]["payments"]["breaker"]["failures"] >= 1
        assert f["providers"]["payments"]["pacing"]["workers"] >= 1  # published by this worker each second
    finally:
        sim.put("/_config", json={"down": False}).raise_for_status()
    await asyncio.sleep(1.2)  # the test settings' breaker reset time
    await pay(client, h["hold_id"], me, "key-up-00001")
    f = await stats(client, event)
    assert f["providers"]["payments"]["breaker"]["state"] == "closed" and f["totals"]["sold"] == 1


async def test_dead_letters_count_this_organisations_only(client, event, app, redis_sync, settings, database_url):
    """Dead letters as the notification worker and the ledger leave them (their stream format)."""
    from gateway.orders import notify

    other_org, _ = await new_org(database_url)
    dead = notify.dead_key(app.gateway.runtime)
    added = [redis_sync.xadd(dead, {**notify.message_fields(kind="webhook", payload={"url": "https://example.org"},
                                                            attempt=5, nid=f"n{org}", org=str(org)),
                                    "last_error": "timeout", "failed_at": "1"})
             for org in (event["org"], other_org)]
    try:
        redis_sync.xadd(event_key(settings.redis_prefix, event["id"], "ledger:dead"), {"k": "order", "d": "{}"})
        f = await stats(client, event)
        assert f["dead_letters"] == {"notifications": 1, "ledger": 1}
    finally:
        redis_sync.xdel(dead, *added)


async def test_a_draft_seat_map_replaced_before_opening_is_counted_as_replaced(client, database_url):
    _, key = await new_org(database_url)
    draft = (await client.post("/v1/events", json=seat_spec(sections=1, rows=2, seats=3), headers=auth(key))).json()
    assert (await client.get(f"/v1/events/{draft['id']}/stats", headers=auth(key))).json()["totals"]["capacity"] == 6
    csv = "section,row,seat,tier\n" + "".join(f"Z,1,{i},p1\n" for i in range(1, 11))
    resp = await client.put(f"/v1/events/{draft['id']}/seat-map", content=csv,
                            headers={**auth(key), "Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    f = (await client.get(f"/v1/events/{draft['id']}/stats", headers=auth(key))).json()
    assert f["totals"]["capacity"] == 10 and [s["name"] for s in f["sections"]] == ["Z"]
    assert (await client.post(f"/v1/events/{draft['id']}/open", headers=auth(key))).status_code == 200
    f = (await client.get(f"/v1/events/{draft['id']}/stats", headers=auth(key))).json()
    assert f["totals"] == {"capacity": 10, "sold": 0, "held": 0, "available": 10} and f["status"] == "on_sale"
