"""Buyer holds and availability over the API."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


async def settle(client, event_id, predicate, timeout=2.0):
    """Poll availability until the snapshot shows what we expect (it refreshes every 100 ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await client.get(f"/v1/events/{event_id}/availability")).json()
        if predicate(body) or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.05)


@pytest.fixture
async def event(client, database_url):
    _, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(ga={"floor": 10}, limit=6))
    ev["api_key"] = key
    return ev


async def test_hold_seats_and_see_them_held(client, event):
    me = await buyer(client)
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-1", "A-1-2"]}, headers=me)
    assert resp.status_code == 201, resp.text
    hold = resp.json()
    assert hold["seats"] == ["A-1-1", "A-1-2"] and hold["total_minor"] == 10000 and hold["currency"] == "EUR"
    assert hold["hold_id"].startswith(f"{event['id']}-") and hold["expires_at"].endswith("Z")
    body = await settle(client, event["id"], lambda b: b["seats"][:2] == "11")
    assert body["seats"][:3] == "110" and body["sections"][0] == {"name": "A", "free": 48, "held": 2, "sold": 0}
    other = await buyer(client)
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-2", "A-1-3"]}, headers=other)
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "seat_unavailable"
    assert resp.json()["error"]["details"]["seats"] == ["A-1-2"]


async def test_availability_since_version(client, event):
    body = (await client.get(f"/v1/events/{event['id']}/availability")).json()
    same = (await client.get(f"/v1/events/{event['id']}/availability?since={body['version']}")).json()
    assert same == {"event_id": event["id"], "version": body["version"], "unchanged": True}
    no_seats = (await client.get(f"/v1/events/{event['id']}/availability?seats=0")).json()
    assert "seats" not in no_seats and no_seats["ga"][0]["available"] == 10


@pytest.mark.parametrize("body, status, code", [
    ({"seats": ["A-1-1", "A-1-1"]}, 422, "validation_error"),
    ({"seats": ["Z-9-99"]}, 422, "validation_error"),
    ({"seats": []}, 422, "validation_error"),
    ({"seats": [f"{x}-{r}-{s}" for x in "AB" for r in range(1, 6) for s in range(1, 11)][:51]}, 422,
     "validation_error"),
    ({"seats": ["A-1-1", "A-1-2", "A-1-3", "A-1-4", "A-1-5", "A-1-6", "A-1-7"]}, 429, "limit_exceeded"),
    ({"ga": {"floor": 0}}, 422, "validation_error"),
    ({"ga": {"floor": -2}}, 422, "validation_error"),
    ({"ga": {"balcony": 1}}, 422, "validation_error"),
    ({"ga": {"floor": 11}}, 429, "limit_exceeded"),
    ({"best": {"section": "Q", "count": 2}}, 422, "validation_error"),
    ({"best": {"section": "A", "count": 0}}, 422, "validation_error"),
    ({"seats": ["A-1-1"], "ga": {"floor": 1}}, 422, "validation_error"),
    ({}, 422, "validation_error"),
    ([1, 2], 422, "validation_error"),
])
async def test_bad_hold_requests_change_nothing(client, event, body, status, code):
    me = await buyer(client)
    before = (await client.get(f"/v1/events/{event['id']}/availability")).json()
    resp = await client.post(f"/v1/events/{event['id']}/holds", json=body, headers=me)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    await asyncio.sleep(0.15)
    after = (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert after["version"] == before["version"] and after["seats"] == before["seats"]


async def test_ga_sold_out(client, event):
    a, b = await buyer(client), await buyer(client)
    assert (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 6}}, headers=a)).status_code == 201
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 5}}, headers=b)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "sold_out"
    assert resp.json()["error"]["details"]["available"] == 4


async def test_best_available_is_adjacent_in_the_best_row(client, event):
    me = await buyer(client)
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"best": {"section": "B", "count": 4}}, headers=me)
    assert resp.status_code == 201, resp.text
    assert resp.json()["seats"] == ["B-1-4", "B-1-5", "B-1-6", "B-1-7"]  # row 1, centred
    other = await buyer(client)
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"best": {"section": "B", "count": 4}},
                             headers=other)
    seats = resp.json()["seats"]
    assert resp.status_code == 201 and all(s.startswith("B-") for s in seats) and len(set(seats)) == 4
    assert not set(seats) & {"B-1-4", "B-1-5", "B-1-6", "B-1-7"}


async def test_release_returns_seats_and_only_for_the_owner(client, event):
    me, other = await buyer(client), await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["B-3-3"]}, headers=me)).json()
    resp = await client.delete(f"/v1/holds/{hold['hold_id']}", headers=other)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    resp = await client.delete(f"/v1/holds/{hold['hold_id']}", headers=me)
    assert resp.status_code == 200 and resp.json()["released"] is True
    resp = await client.delete(f"/v1/holds/{hold['hold_id']}", headers=me)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "hold_not_found"
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["B-3-3"]}, headers=other)
    assert resp.status_code == 201


async def test_tokens_are_required_and_checked(client, event):
    url = f"/v1/events/{event['id']}/holds"
    assert (await client.post(url, json={"seats": ["A-1-1"]})).status_code == 401
    token = (await client.post("/v1/buyer-token")).json()["buyer_token"]
    kind, payload, mac = token.split(".")
    forged = f"{kind}.{payload[:-2]}AA.{mac}"
    resp = await client.post(url, json={"seats": ["A-1-1"]}, headers=auth(forged))
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_token"


async def test_paused_and_unknown_events(client, event):
    me = await buyer(client)
    await client.post(f"/v1/events/{event['id']}/pause", headers=auth(event["api_key"]))
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-1"]}, headers=me)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_on_sale"
    resp = await client.get("/v1/events/999999999/availability")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "event_not_found"
    resp = await client.get("/v1/events/abc/availability")
    assert resp.status_code == 404


async def test_sold_seat_is_refused_from_the_snapshot(client, event, app, redis_sync):
    from gateway.sale import inventory

    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-5-5"]}, headers=me)).json()
    runtime = app.gateway.runtime
    buyer_id = app.gateway.signer.verify(me["Authorization"].split()[1], "b")["sub"]
    await inventory.confirm(scripts=runtime.scripts, prefix=runtime.settings.redis_prefix,
                            event_id=event["id"], hold_id=hold["hold_id"], buyer=buyer_id,
                            order_id=str(uuid.uuid4()), order={})
    await settle(client, event["id"], lambda b: b["sections"][0]["sold"] == 1)
    other = await buyer(client)
    calls = lambda: redis_sync.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)  # noqa: E731
    before = calls()
    for _ in range(30):
        resp = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-5-5"]}, headers=other)
        assert resp.status_code == 409 and resp.json()["error"]["details"]["seats"] == ["A-5-5"]
    assert calls() - before < 30, "a seat the snapshot knows sold is refused without a Lua call"
