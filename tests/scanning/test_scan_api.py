"""Online scanning over the API (edge route), first scan wins, every refusal."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway.orders import ticketcodes
from tests.scanning.conftest import buy, device, drain_ledger, scan
from tests.utils.factories import auth, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


async def test_admitted_then_duplicate_with_when_and_where(client, door):
    ticket = door["tickets"][0]
    first = await scan(client, door["north"], ticket["code"])
    assert first["result"] == "admitted" and first["degraded"] is False and first["inside"] is True
    assert first["ticket"]["seat"] == "A-1-1" and first["ticket"]["section"] == "A"
    assert first["ticket"]["holder"] == "ada@example.org" and first["ticket"]["ticket_id"] == ticket["ticket_id"]
    assert first["gate"] == "north" and first["device_id"] == door["north"]["device_id"]
    again = await scan(client, door["south"], "  " + ticket["code"].lower() + "\n")
    assert again["result"] == "duplicate" and again["gate"] == "south"
    assert again["first_scan"]["gate"] == "north" and again["first_scan"]["at_ms"] == first["scanned_at_ms"]
    assert again["first_scan"]["scan_id"] == first["scan_id"] and again["first_scan"]["at"] == first["scanned_at"]
    ga = door["tickets"][2]
    answer = await scan(client, door["south"], ga["code"])
    assert answer["result"] == "admitted" and answer["ticket"]["type"] == "floor" and answer["ticket"]["seat"] is None


async def test_same_ticket_at_two_gates_at_once_one_admitted(client, door):
    for ticket in door["tickets"]:
        answers = await asyncio.gather(*(scan(client, door["north" if i % 2 else "south"], ticket["code"])
                                         for i in range(24)))
        results = [a["result"] for a in answers]
        assert results.count("admitted") == 1 and results.count("duplicate") == 23, results
        winner = next(a for a in answers if a["result"] == "admitted")
        assert {a["first_scan"]["scan_id"] for a in answers if a["result"] == "duplicate"} == {winner["scan_id"]}
    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    assert stats["admitted"] == len(door["tickets"]) and stats["duplicates"] == 23 * len(door["tickets"])
    assert stats["inside"] == len(door["tickets"])
    assert set(stats["gates"]) == {"north", "south"}
    figures = (await client.get(f"/v1/events/{door['id']}/stats", headers=auth(door["api_key"]))).json()
    assert figures["scans"]["admitted"] == len(door["tickets"]) and set(figures["scans"]["gates"]) == {"north", "south"}


async def test_forged_and_altered_codes_are_invalid(client, door, pg):
    code = door["tickets"][0]["code"]
    raw = bytearray(base64.b32decode(code))
    raw[-1] ^= 1  # signature altered
    altered_sig = base64.b32encode(bytes(raw)).decode()
    raw = bytearray(base64.b32decode(code))
    raw[10] ^= 1  # serial altered, signature kept
    altered_serial = base64.b32encode(bytes(raw)).decode()
    seed, _ = ticketcodes.generate_keypair()
    forged = ticketcodes.encode(private_key=seed, key_id=1, event_id=door["id"], serial=1)
    other_key_id = ticketcodes.encode(private_key=seed, key_id=9, event_id=door["id"], serial=1)
    cases = {altered_sig: "bad_signature", altered_serial: "bad_signature", forged: "bad_signature",
             other_key_id: "unknown_key", "hello": "malformed", code[:-1]: "malformed", code[:-1] + "1": "malformed",
             "B" + code[1:]: "unknown_version", "": "malformed"}
    for text, reason in cases.items():
        answer = await scan(client, door["north"], text)
        assert answer["result"] == "invalid" and answer["reason"] == reason and answer["ticket"] is None, (text, answer)
    # A genuine signature over a serial that was never sold (only a leaked key could make one).
    private = await pg.fetchval("SELECT signing_private_key FROM events WHERE id = $1", door["id"])
    never = ticketcodes.encode(private_key=private, key_id=1, event_id=door["id"], serial=999)
    answer = await scan(client, door["north"], never)
    assert answer["result"] == "invalid" and answer["reason"] == "not_issued"


async def test_a_ticket_of_another_event_is_wrong_event(client, door, database_url):
    _, key = await new_org(database_url)
    other = await open_event(client, key, seat_spec(sections=1, rows=1, seats=5, name="Other Night"))
    order = await buy(client, other["id"], {"seats": ["A-1-1"]})
    answer = await scan(client, door["north"], order["tickets"][0]["code"])
    assert answer["result"] == "wrong_event" and answer["ticket"]["event_id"] == other["id"]
    assert answer["ticket"]["serial"] == order["tickets"][0]["serial"] and answer["ticket"]["holder"] is None
    # A code naming another event but signed with nobody's key is invalid, not wrong_event.
    seed, _ = ticketcodes.generate_keypair()
    fake = ticketcodes.encode(private_key=seed, key_id=1, event_id=other["id"], serial=1)
    assert (await scan(client, door["north"], fake))["result"] == "invalid"
    nowhere = ticketcodes.encode(private_key=seed, key_id=1, event_id=4_000_000_000, serial=1)
    assert (await scan(client, door["north"], nowhere))["result"] == "invalid"


async def test_a_refunded_ticket_is_void(client, door, app):
    await drain_ledger(app)  # the refund reads the order in Postgres
    order = door["orders"][0]
    resp = await client.post(f"/v1/orders/{order['order_id']}/refund", json={"reason": "test"},
                             headers=auth(door["api_key"]))
    assert resp.status_code == 200, resp.text
    answer = await scan(client, door["north"], order["tickets"][1]["code"])
    assert answer["result"] == "void" and answer["ticket"]["voided_at"] and answer["inside"] is None
    assert answer["ticket"]["seat"] == "A-1-2"
    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    assert stats["void"] == 1 and stats["admitted"] == 0


async def test_a_revoked_device_is_refused_at_once(client, door):
    ticket = door["tickets"][0]
    assert (await scan(client, door["north"], ticket["code"]))["result"] == "admitted"
    resp = await client.delete(f"/v1/events/{door['id']}/devices/{door['north']['device_id']}",
                               headers=auth(door["api_key"]))
    assert resp.status_code == 200 and resp.json()["revoked_at"]
    again = await client.delete(f"/v1/events/{door['id']}/devices/{door['north']['device_id']}",
                                headers=auth(door["api_key"]))
    assert again.status_code == 200 and again.json()["revoked_at"] == resp.json()["revoked_at"]
    token = auth(door["north"]["token"])
    for call in (client.post("/v1/scan", json={"code": ticket["code"]}, headers=token),
                 client.get("/v1/scan/manifest", headers=token),
                 client.post("/v1/scan/batch", json={"scans": [{"scan_id": "x1", "code": ticket["code"],
                                                                "scanned_at": 1_750_000_000_000}]},
                             headers=token)):
        resp = await call
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "device_revoked", resp.text
    # The other device of the gate still works.
    assert (await scan(client, door["south"], door["tickets"][1]["code"]))["result"] == "admitted"
    listed = (await client.get(f"/v1/events/{door['id']}/devices", headers=auth(door["api_key"]))).json()
    by_id = {d["device_id"]: d for d in listed["devices"]}
    assert by_id[door["north"]["device_id"]]["revoked_at"] and by_id[door["south"]["device_id"]]["revoked_at"] is None
    assert by_id[door["south"]["device_id"]]["last_contact_at"]


async def test_idempotent_scan_id_online(client, door):
    code = door["tickets"][0]["code"]
    first = await scan(client, door["north"], code, scan_id="dev-1:0001")
    again = await scan(client, door["north"], code, scan_id="dev-1:0001")
    assert first["result"] == again["result"] == "admitted" and again["replay"] is True
    assert first["scanned_at_ms"] == again["scanned_at_ms"]
    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    assert stats["admitted"] == 1 and stats["duplicates"] == 0


async def test_reentry_per_ticket_type(client, door):
    key = auth(door["api_key"])
    resp = await client.put(f"/v1/events/{door['id']}/scan-rules", json={"reentry": {"ga": ["floor"]}}, headers=key)
    assert resp.status_code == 200 and resp.json() == {"reentry": {"ga": ["floor"], "sections": []}}
    bad = await client.put(f"/v1/events/{door['id']}/scan-rules", json={"reentry": {"ga": ["vip"]}}, headers=key)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    floor, seat = door["tickets"][2]["code"], door["tickets"][0]["code"]
    north, south = door["north"], door["south"]
    steps = [(floor, "in", "admitted"), (floor, "in", "duplicate"), (floor, "out", "exited"),
             (floor, "out", "not_inside"), (floor, "in", "admitted"),
             (seat, "out", "not_inside"), (seat, "in", "admitted"), (seat, "out", "exited"), (seat, "in", "duplicate")]
    for i, (code, direction, expected) in enumerate(steps):
        answer = await scan(client, north if i % 2 else south, code, direction=direction)
        assert answer["result"] == expected, (i, answer)
    assert (await scan(client, north, floor, direction="out"))["reentry"] is True
    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=key)).json()
    assert stats["reentries"] == 1 and stats["exited"] == 3 and stats["inside"] == 0


async def test_bad_requests_get_the_common_error_shape(client, door):
    tok = auth(door["north"]["token"])
    cases = [
        (dict(json={"code": "x"}), {}, 401, "unauthorized"),
        (dict(json={"code": "x"}), {"Authorization": "Bearer d.bad.token"}, 401, "invalid_token"),
        (dict(json={"code": "x"}), auth(door["api_key"]), 401, "invalid_token"),
        (dict(json={}), tok, 422, "validation_error"),
        (dict(json={"code": 12}), tok, 422, "validation_error"),
        (dict(json={"code": "x", "scan_id": "has space"}), tok, 422, "validation_error"),
        (dict(json={"code": "x", "direction": "up"}), tok, 422, "validation_error"),
        (dict(json={"code": "x", "scanned_at": "yesterday"}), tok, 422, "validation_error"),
        (dict(json={"code": "x", "extra": 1}), tok, 422, "validation_error"),
        (dict(json=["x"]), tok, 422, "validation_error"),
        (dict(json={"code": "x" * 1001}), tok, 422, "validation_error"),
        (dict(content=b"{nope", headers={"content-type": "application/json"}), tok, 400, "malformed_json"),
        (dict(content=b"code=x", headers={"content-type": "text/plain"}), tok, 415, "unsupported_media_type"),
    ]
    for kwargs, headers, status, code in cases:
        headers = {**kwargs.pop("headers", {}), **headers}
        resp = await client.post("/v1/scan", headers=headers, **kwargs)
        assert resp.status_code == status and resp.json()["error"]["code"] == code, (kwargs, resp.text)
        assert set(resp.json()["error"]) == {"code", "message", "details"}
    resp = await client.post("/v1/scan", json={"code": "x"}, headers={**tok, "X-Scanner-Queue": "-1"})
    assert resp.status_code == 422
    batch_cases = [{"scans": []}, {"scans": [{"code": "x"}]}, {"scans": [{"code": "x", "scan_id": "a"}]},
                   {"scans": [{"code": "x", "scan_id": "a", "scanned_at": 1_750_000_000_000}] * 2},
                   {"scans": [{"code": "x", "scan_id": f"a{i}", "scanned_at": 1_750_000_000_000} for i in range(501)]},
                   {"scans": [{"code": "x", "scan_id": "a", "scanned_at": 1_750_000_000_000,
                               "local_result": "maybe"}]}]
    for body in batch_cases:
        resp = await client.post("/v1/scan/batch", json=body, headers=tok)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", resp.text
    key = auth(door["api_key"])
    resp = await client.post(f"/v1/events/{door['id']}/devices", json={"gate": ""}, headers=key)
    assert resp.status_code == 422
    resp = await client.post(f"/v1/events/{door['id']}/devices", json={"gate": "n", "extra": 1}, headers=key)
    assert resp.status_code == 422
    resp = await client.delete(f"/v1/events/{door['id']}/devices/not-a-uuid", headers=key)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "device_not_found"


async def test_other_organisations_cannot_touch_devices(client, door, database_url):
    _, key = await new_org(database_url)
    for method, url in (("post", f"/v1/events/{door['id']}/devices"), ("get", f"/v1/events/{door['id']}/devices"),
                        ("delete", f"/v1/events/{door['id']}/devices/{door['north']['device_id']}")):
        kwargs = {"json": {"gate": "x"}} if method == "post" else {}
        resp = await getattr(client, method)(url, headers=auth(key), **kwargs)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "event_not_found", resp.text
    assert (await scan(client, door["north"], door["tickets"][0]["code"]))["result"] == "admitted"


async def test_scans_reach_postgres(client, door, app, pg):
    await scan(client, door["north"], door["tickets"][0]["code"], scan_id="pg-1")
    await scan(client, door["south"], door["tickets"][0]["code"], scan_id="pg-2")
    await scan(client, door["south"], "garbage", scan_id="pg-3")
    await drain_ledger(app)
    rows = await pg.fetch("SELECT device_scan_id, result, gate, ticket_id::text, mode FROM scans WHERE event_id = $1 "
                          "ORDER BY device_scan_id", door["id"])
    assert [(r["device_scan_id"], r["result"], r["gate"], r["mode"]) for r in rows] == [
        ("pg-1", "admitted", "north", "online"), ("pg-2", "duplicate", "south", "online"),
        ("pg-3", "invalid", "south", "online")]
    assert rows[0]["ticket_id"] == door["tickets"][0]["ticket_id"] and rows[2]["ticket_id"] is None


async def test_device_creation_answers_the_contract(client, door):
    dev = await device(client, door, "east gate.2")
    assert set(dev) == {"device_id", "event_id", "gate", "name", "token", "created_at", "revoked_at"}
    assert dev["token"].startswith("d.") and dev["gate"] == "east gate.2" and dev["revoked_at"] is None


async def test_two_gateway_workers_admit_once(live_gateway, database_url, sim):
    """Real HTTP to a gateway of 2 worker processes: many clients scan the same tickets at once."""
    import httpx

    async with httpx.AsyncClient(base_url=live_gateway, timeout=20) as client:
        _, key = await new_org(database_url)
        event = await open_event(client, key, seat_spec(sections=0, ga={"floor": 20}, limit=10))
        event["api_key"] = key
        tickets = (await buy(client, event["id"], {"ga": {"floor": 5}}))["tickets"]
        devices = [await device(client, event, f"gate-{i}") for i in range(4)]
    clients = [httpx.AsyncClient(base_url=live_gateway, timeout=20) for _ in range(16)]  # own connections
    try:
        answers = await asyncio.gather(*(scan(clients[i], devices[i % 4], t["code"])
                                         for t in tickets for i in range(16)))
    finally:
        for c in clients:
            await c.aclose()
    for t in tickets:
        mine = [a for a in answers if a["ticket"]["serial"] == t["serial"]]
        assert [a["result"] for a in mine].count("admitted") == 1 and len(mine) == 16


async def test_door_keys_manage_devices_sales_keys_do_not(client, door):
    keys = {}
    for role in ("door", "sales"):
        resp = await client.post("/v1/keys", json={"name": f"{role} key", "role": role}, headers=auth(door["api_key"]))
        assert resp.status_code == 201, resp.text
        keys[role] = resp.json()["key"]
    made = await client.post(f"/v1/events/{door['id']}/devices", json={"gate": "west"}, headers=auth(keys["door"]))
    assert made.status_code == 201
    refused = await client.post(f"/v1/events/{door['id']}/devices", json={"gate": "west"}, headers=auth(keys["sales"]))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert (await scan(client, made.json(), door["tickets"][0]["code"]))["result"] == "admitted"
