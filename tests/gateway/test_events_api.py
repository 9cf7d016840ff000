"""Organiser event API: creation, validation, status changes, organisation scoping."""

from __future__ import annotations

import pytest

from tests.utils.factories import auth, new_org, seat_spec

pytestmark = pytest.mark.anyio


async def test_create_get_list(client, database_url, pg):
    _, key = await new_org(database_url)
    resp = await client.post("/v1/events", json=seat_spec(ga={"floor": 100}), headers=auth(key))
    assert resp.status_code == 201, resp.text
    event = resp.json()
    assert event["status"] == "draft" and event["capacity"] == 2 * 5 * 10 + 100
    assert [s["seats"] for s in event["sections"]] == [50, 50]
    assert event["ga"][0]["code"] == "floor"
    got = await client.get(f"/v1/events/{event['id']}", headers=auth(key))
    assert got.json() == event
    listed = await client.get("/v1/events", headers=auth(key))
    assert [e["id"] for e in listed.json()["events"]] == [event["id"]]
    seats = await pg.fetchval("SELECT count(*) FROM seats WHERE event_id = $1", event["id"])
    assert seats == 100
    label = await pg.fetchval("SELECT label FROM seats WHERE event_id = $1 AND seat_index = 12", event["id"])
    assert label == "A-2-3"


async def test_other_organisations_cannot_see_or_change(client, database_url):
    _, key_a = await new_org(database_url)
    _, key_b = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(), headers=auth(key_a))).json()
    for method, path in (("GET", f"/v1/events/{event['id']}"), ("POST", f"/v1/events/{event['id']}/open"),
                         ("POST", f"/v1/events/{event['id']}/close")):
        resp = await client.request(method, path, headers=auth(key_b))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "event_not_found"
    assert (await client.get("/v1/events", headers=auth(key_b))).json() == {"events": []}
    assert (await client.get(f"/v1/events/{event['id']}", headers=auth(key_a))).json()["status"] == "draft"


@pytest.mark.parametrize("mutate, where", [
    (lambda s: s.update(currency="eur"), "currency"),
    (lambda s: s["sections"][0]["rows"][0].update(seats=0), "seats"),
    (lambda s: s["sections"][0]["rows"][0].update(price_tier="nope"), "price tier"),
    (lambda s: s["sections"].append(dict(s["sections"][0])), "section names"),
    (lambda s: s.update(sections=[], ga=[]), "seat map"),
    (lambda s: s.update(hold_ttl_s=1), "hold_ttl_s"),
    (lambda s: s.update(per_buyer_limit=0), "per_buyer_limit"),
    (lambda s: s.update(unknown_field=1), "unknown_field"),
    (lambda s: s.update(ga=[{"code": "x", "name": "X", "capacity": -1, "price_minor": 1}]), "capacity"),
])
async def test_bad_event_specs_are_refused(client, database_url, pg, mutate, where):
    _, key = await new_org(database_url)
    spec = seat_spec()
    mutate(spec)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "validation_error"
    assert where in resp.text
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_status_transitions(client, database_url, redis_sync, settings):
    _, key = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(), headers=auth(key))).json()
    eid = event["id"]
    bad = await client.post(f"/v1/events/{eid}/pause", headers=auth(key))
    assert bad.status_code == 409 and bad.json()["error"]["code"] == "invalid_state"
    assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).json()["status"] == "on_sale"
    meta = redis_sync.hgetall(f"{settings.redis_prefix}:{{ev:{eid}}}:meta")
    assert meta[b"status"] == b"on_sale" and meta[b"n_seats"] == b"100"
    assert (await client.post(f"/v1/events/{eid}/pause", headers=auth(key))).json()["status"] == "paused"
    assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).json()["status"] == "on_sale"
    assert (await client.post(f"/v1/events/{eid}/close", headers=auth(key))).json()["status"] == "closed"
    again = await client.post(f"/v1/events/{eid}/open", headers=auth(key))
    assert again.status_code == 409
    assert redis_sync.hget(f"{settings.redis_prefix}:{{ev:{eid}}}:meta", "status") == b"closed"
