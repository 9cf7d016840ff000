"""Bad input found black-box: every one gets a clear 4xx in the common error shape and changes nothing.

The buyer's hot routes are answered by the edge (gateway/api/hot.py) and, without it, by FastAPI
(gateway/api/routes/buyer.py): both fronts are checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.store.keys import checkout_records
from tests.gateway.test_errors import assert_shape
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio

BIG = 2**63  # past Postgres' bigint
HUGE = "9" * 5000  # past Python's int() digit limit (4,300)


@pytest.fixture
async def framework(app) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the FastAPI app alone (the routes the edge answers itself when it is in front)."""
    transport = httpx.ASGITransport(app=app.fastapi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


@pytest.fixture(params=["edge", "framework"])
async def front(request, client, framework) -> httpx.AsyncClient:
    return client if request.param == "edge" else framework


@pytest.fixture
async def event(client, database_url, sim):
    _, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(ga={"floor": 20}))
    ev["api_key"] = key
    return ev


def is_4xx(resp: httpx.Response) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A3", "1%C2%B2", HUGE])
async def test_odd_event_ids_on_buyer_routes_are_404_or_422(front, event, raw):
    me = await buyer(front)
    for method, path, body in [("GET", f"/v1/events/{raw}/availability", None),
                               ("POST", f"/v1/events/{raw}/holds", {"seats": ["A-1-1"]}),
                               ("GET", f"/v1/events/{raw}/queue", None),
                               ("POST", f"/v1/events/{raw}/queue", None),
                               ("DELETE", f"/v1/holds/{raw}-abc", None),
                               ("POST", f"/v1/holds/{raw}-abc/checkout", {})]:
        resp = await front.request(method, path, json=body, headers={**me, "Idempotency-Key": "key-12345678"})
        assert resp.status_code in (404, 422), (method, path, resp.status_code, resp.text)
        is_4xx(resp)


async def test_huge_since_and_hold_ids(front, event):
    me = await buyer(front)
    err = is_4xx(await front.get(f"/v1/events/{event['id']}/availability", params={"since": HUGE}))
    assert err["code"] in ("validation_error", "bad_request")
    for bad in ("²", "-1", "1.5", "", "x"):
        resp = await front.get(f"/v1/events/{event['id']}/availability", params={"since": bad})
        assert resp.status_code == 422 and is_4xx(resp)["code"] == "validation_error", (bad, resp.text)
    for bad in ("2", "-1", "yes", "²"):
        resp = await front.get(f"/v1/events/{event['id']}/availability", params={"seats": bad})
        assert resp.status_code == 422 and is_4xx(resp)["code"] == "validation_error", (bad, resp.text)
    ok = await front.get(f"/v1/events/{event['id']}/availability", params={"seats": "0", "since": "0"})
    assert ok.status_code == 200 and "seats" not in ok.json()
    for method, path in [("DELETE", f"/v1/holds/{event['id']}-{HUGE}"), ("DELETE", f"/v1/holds/{HUGE}"),
                         ("POST", f"/v1/holds/{event['id']}-{HUGE}/checkout")]:
        resp = await front.request(method, path, json={}, headers={**me, "Idempotency-Key": "key-12345678"})
        assert is_4xx(resp)["code"] in ("hold_not_found", "validation_error"), resp.text


@pytest.mark.parametrize("best", [{"section": ["A"], "count": 1}, {"section": {"A": 1}, "count": 1},
                                  {"section": None, "count": 1}, {"section": "A", "count": [1]}])
async def test_best_with_a_section_that_is_not_a_string(front, event, best):
    me = await buyer(front)
    resp = await front.post(f"/v1/events/{event['id']}/holds", json={"best": best}, headers=me)
    assert resp.status_code == 422 and is_4xx(resp)["code"] == "validation_error", resp.text
    avail = (await front.get(f"/v1/events/{event['id']}/availability")).json()
    assert all(s["held"] == 0 for s in avail["sections"]), avail


ORGANISER_ROUTES = [
    ("GET", "/v1/events/{id}"), ("POST", "/v1/events/{id}/open"), ("POST", "/v1/events/{id}/pause"),
    ("POST", "/v1/events/{id}/close"), ("PATCH", "/v1/events/{id}/admission"), ("PUT", "/v1/events/{id}/schedule"),
    ("GET", "/v1/events/{id}/orders"), ("GET", "/v1/events/{id}/stats"), ("GET", "/v1/events/{id}/devices"),
    ("POST", "/v1/events/{id}/devices"), ("GET", "/v1/events/{id}/scan-rules"), ("GET", "/v1/events/{id}/scans"),
    ("GET", "/v1/events/{id}/public"), ("GET", "/v1/events/{id}/queue/log"),
]


@pytest.mark.parametrize("event_id", [BIG, 2**64, 10**30, "%C2%B2"])
async def test_organiser_routes_with_event_ids_past_bigint(client, database_url, event_id):
    _, key = await new_org(database_url)
    for method, path in ORGANISER_ROUTES:
        body = {"rate_per_s": 5} if "admission" in path else {"gate": "north"} if "devices" in path else {}
        resp = await client.request(method, path.format(id=event_id), json=body, headers=auth(key))
        assert resp.status_code in (404, 422), (method, path, resp.status_code, resp.text)
        is_4xx(resp)
    resp = await client.put(f"/v1/events/{event_id}/seat-map", content=b"section,row,seat,tier\nA,1,1,p1\n",
                            headers={**auth(key), "content-type": "text/csv"})
    is_4xx(resp)
    assert_shape(await client.delete(f"/v1/keys/{BIG}", headers=auth(key)), 422, "validation_error")


async def test_order_list_offset_past_bigint(client, event):
    for offset in (BIG, 10**40):
        resp = await client.get(f"/v1/events/{event['id']}/orders", params={"offset": offset},
                                headers=auth(event["api_key"]))
        assert_shape(resp, 422, "validation_error")
    ok = await client.get(f"/v1/events/{event['id']}/orders", params={"offset": 10**6}, headers=auth(event["api_key"]))
    assert ok.status_code == 200 and ok.json()["orders"] == []


@pytest.mark.parametrize("ids", [["abc"], [""], ["1-x"], [f"{2**64}-0"], ["0-0", "abc"]])
async def test_dead_letter_replay_with_ids_that_are_not_stream_ids(client, database_url, ids):
    _, key = await new_org(database_url)
    resp = await client.post("/v1/notifications/dead/replay", json={"ids": ids}, headers=auth(key))
    assert_shape(resp, 422, "validation_error")


@pytest.mark.parametrize("where", ["name", "venue", "section", "row", "ga_name", "tier"])
async def test_nul_byte_in_a_new_event_is_refused(client, database_url, pg, where):
    _, key = await new_org(database_url)
    spec = seat_spec(ga={"floor": 5})
    if where == "name":
        spec["name"] = "Night\x00Out"
    elif where == "venue":
        spec["venue"] = "Hall\x00"
    elif where == "section":
        spec["sections"][0]["name"] = "A\x00"
    elif where == "row":
        spec["sections"][0]["rows"][0]["label"] = "\x001"
    elif where == "ga_name":
        spec["ga"][0]["name"] = "Floor\x00"
    else:
        spec["price_tiers"]["p\x00"] = 1
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert_shape(resp, 422, "validation_error")
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_chunked_body_past_the_limit_is_413_on_framework_routes(client, database_url, settings):
    _, key = await new_org(database_url)

    async def chunks():
        piece = b" " * 65536
        for _ in range((10 * 1024 * 1024) // len(piece)):
            yield piece

    resp = await client.post("/v1/events", content=chunks(), headers={**auth(key), "content-type": "application/json"})
    err = assert_shape(resp, 413, "body_too_large")
    assert err["details"]["max_bytes"] >= settings.max_body_bytes


async def test_checkout_of_a_missing_hold_writes_no_record(client, event, redis_sync, settings):
    me = await buyer(client)
    records = checkout_records(settings.redis_prefix, event["id"])
    before = redis_sync.hlen(records)
    for i in range(30):
        resp = await client.post(f"/v1/holds/{event['id']}-{'ab' * 10}/checkout", json={},
                                 headers={**me, "Idempotency-Key": f"key-{i:08d}"})
        assert_shape(resp, 404, "hold_not_found")
    missing_event = 10**17 + 12345
    for i in range(5):
        resp = await client.post(f"/v1/holds/{missing_event}-{'ab' * 10}/checkout", json={},
                                 headers={**me, "Idempotency-Key": f"key-{i:08d}"})
        assert resp.status_code == 404 and is_4xx(resp)["code"] in ("hold_not_found", "event_not_found")
    assert redis_sync.hlen(records) == before
    assert redis_sync.exists(checkout_records(settings.redis_prefix, missing_event)) == 0


async def test_door_routes_with_non_ascii_digits(client, event):
    resp = await client.post(f"/v1/events/{event['id']}/devices", json={"gate": "north"}, headers=auth(event["api_key"]))
    device = auth(resp.json()["token"])
    for value in (b"\xb2", b"1\xb2", b"\xd9\xa3"):  # "²", "1²", "٣" once decoded
        resp = await client.post("/v1/scan", json={"code": "X" * 120}, headers={**device, "X-Scanner-Queue": value})
        assert resp.status_code == 422 and is_4xx(resp)["code"] == "validation_error", resp.text
        resp = await client.get("/v1/scan/manifest", headers={**device, "X-Scanner-Queue": value})
        assert resp.status_code == 422, resp.text
    for since in ("²", "١٢", "x"):
        resp = await client.get("/v1/scan/manifest", params={"since": since}, headers=device)
        assert resp.status_code == 200 and resp.json()["full"] is True, resp.text  # an unusable since: everything
    resp = await client.get("/v1/scan/manifest", params={"since": "9" * 5000}, headers=device)
    assert resp.status_code == 422 and is_4xx(resp)["code"] == "validation_error", resp.text


@pytest.mark.parametrize("when", [1893456000, 1893456000.5, True])
async def test_times_are_text_as_documented_not_numbers(client, event, pg, when):
    spec = {**seat_spec(ga={"floor": 5}), "sale_opens_at": when}
    before = await pg.fetchval("SELECT count(*) FROM events")
    assert_shape(await client.post("/v1/events", json=spec, headers=auth(event["api_key"])), 422, "validation_error")
    assert await pg.fetchval("SELECT count(*) FROM events") == before
    resp = await client.put(f"/v1/events/{event['id']}/schedule", json={"sale_closes_at": when},
                            headers=auth(event["api_key"]))
    assert_shape(resp, 422, "validation_error")
