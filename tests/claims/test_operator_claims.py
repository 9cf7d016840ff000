"""Promises of the operator and organiser documents that no other test held to their exact figures.

docs/scanning.md (device bounds, the X-Scanner-Queue range, Server-Timing), docs/organisers.md (the bounds
of the event body at both edges, what each key role may do) and docs/operations.md (metric names).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

import httpx
import pytest

from tests.scanning.conftest import door, scan  # noqa: F401  (door is a fixture)
from tests.utils.factories import auth, new_org, seat_spec

pytestmark = pytest.mark.anyio


# -- docs/scanning.md ----------------------------------------------------------------------------------------

async def test_a_scan_answer_says_how_long_the_gateway_spent(client, door):  # noqa: F811
    """`Server-Timing: scan;dur=<ms>` on the scan route (the load tests' scan server time reads it)."""
    resp = await client.post("/v1/scan", json={"code": door["tickets"][0]["code"]},
                             headers=auth(door["north"]["token"]))
    assert resp.status_code == 200 and resp.json()["result"] == "admitted", resp.text
    timing = re.fullmatch(r"scan;dur=(\d+(?:\.\d+)?)", resp.headers.get("server-timing", ""))
    assert timing, resp.headers
    assert 0 < float(timing.group(1)) < 10_000


async def test_the_scanner_queue_header_takes_0_to_a_million(client, door):  # noqa: F811
    """`X-Scanner-Queue` is a decimal integer 0–1,000,000; the organiser sees the last one per device."""
    tok = auth(door["north"]["token"])
    code = door["tickets"][0]["code"]
    for value, status in (("1000001", 422), ("99999999", 422), ("1000000", 200)):
        resp = await client.post("/v1/scan", json={"code": code}, headers={**tok, "X-Scanner-Queue": value})
        assert resp.status_code == status, (value, resp.text)
        if status == 422:
            assert resp.json()["error"]["code"] == "validation_error"
    listed = (await client.get(f"/v1/events/{door['id']}/devices", headers=auth(door["api_key"]))).json()
    north = next(d for d in listed["devices"] if d["device_id"] == door["north"]["device_id"])
    assert north["queue_length"] == 1_000_000 and north["last_contact_at"] and "token" not in north
    resp = await client.get("/v1/scan/manifest", headers={**tok, "X-Scanner-Queue": "0"})
    assert resp.status_code == 200, resp.text
    listed = (await client.get(f"/v1/events/{door['id']}/devices", headers=auth(door["api_key"]))).json()
    assert [d["queue_length"] for d in listed["devices"] if d["device_id"] == door["north"]["device_id"]] == [0]


@pytest.mark.parametrize("body, ok", [
    ({"gate": "g" * 40}, True),
    ({"gate": "9 East gate_2.b-c"}, True),
    ({"gate": "g" * 41}, False),
    ({"gate": "-north"}, False),
    ({"gate": " north"}, False),
    ({"gate": "north/2"}, False),
    ({"gate": "north", "name": "n" * 100}, True),
    ({"gate": "north", "name": "n" * 101}, False),
    ({"gate": "north", "name": ""}, False),
    ({"gate": "north", "name": "tab\there"}, False),
])
async def test_device_gate_and_name_bounds(client, database_url, body, ok):
    """gate: 1–40 letters, digits, space, `.`, `_`, `-`, starting with a letter or digit; name: 1–100 printable."""
    _, key = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(sections=1, rows=1, seats=2), headers=auth(key))).json()
    resp = await client.post(f"/v1/events/{event['id']}/devices", json=body, headers=auth(key))
    listed = (await client.get(f"/v1/events/{event['id']}/devices", headers=auth(key))).json()["devices"]
    if ok:
        assert resp.status_code == 201, resp.text
        assert resp.json()["gate"] == body["gate"] and [d["gate"] for d in listed] == [body["gate"]]
        assert resp.json()["name"] == body.get("name") and listed[0]["name"] == body.get("name")  # optional
    else:
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", resp.text
        assert listed == []


# -- docs/organisers.md: the event body's bounds, at both edges ----------------------------------------------

def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        keys = path.split(".")
        target = spec
        for k in keys[:-1]:
            target = target.setdefault(k, {}) if not k.isdigit() else target[int(k)]
        target[keys[-1]] = value
    return mutate


def _ga(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["ga"] = [{"code": "floor", "name": "Floor", "capacity": 10, "price_minor": 100, **fields}]
    return mutate


def _ga_types(n: int) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["ga"] = [{"code": f"t{i}", "name": f"T{i}", "capacity": 1, "price_minor": 1} for i in range(n)]
    return mutate


def _tier(code: str, price: int) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["price_tiers"] = {"p1": 5000, "p2": 3000, code: price}
    return mutate


def _rows(rows: int, seats: int, extra_seats: int = 0) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["sections"][0]["rows"] = [{"label": str(r + 1), "seats": seats, "price_tier": "p1"} for r in range(rows)]
        if extra_seats:
            spec["sections"][0]["rows"].append({"label": "x", "seats": extra_seats, "price_tier": "p1"})
    return mutate


def _sections(n: int, name: str | None = None) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["sections"] = [{"name": name or f"S{i}", "rows": [{"label": "1", "seats": 1, "price_tier": "p1"}]}
                            for i in range(n)]
    return mutate


# (field named in the refusal, value at the edge (accepted), value just past it (refused))
BOUNDS = [
    ("seats", _rows(1, 2_000), _rows(1, 2_001)),
    ("rows", _rows(2_000, 1), _rows(2_001, 1)),
    ("sections", _sections(1_000), _sections(1_001)),
    ("name", _sections(1, "S" * 24), _sections(1, "S" * 25)),
    ("name", _set("name", "n" * 200), _set("name", "n" * 201)),
    ("venue", _set("venue", "v" * 200), _set("venue", "v" * 201)),
    ("hold_ttl_s", _set("hold_ttl_s", 5), _set("hold_ttl_s", 4)),
    ("hold_ttl_s", _set("hold_ttl_s", 86_400), _set("hold_ttl_s", 86_401)),
    ("per_buyer_limit", _set("per_buyer_limit", 1), _set("per_buyer_limit", 0)),
    ("per_buyer_limit", _set("per_buyer_limit", 1_000), _set("per_buyer_limit", 1_001)),
    ("price_tiers", _tier("t" * 32, 100_000_000), _tier("t" * 33, 1)),
    ("price_tiers", _tier("top", 0), _tier("top", 100_000_001)),
    ("capacity", _ga(capacity=10_000_000), _ga(capacity=10_000_001)),
    ("name", _ga(name="g" * 100), _ga(name="g" * 101)),
    ("ga", _ga_types(100), _ga_types(101)),
    ("admission_rate", _set("queue", {"enabled": True, "admission_rate": 100_000}),
     _set("queue", {"enabled": True, "admission_rate": 100_000.5})),
    ("admission_rate", _set("queue", {"enabled": True, "admission_rate": 0.01}),
     _set("queue", {"enabled": True, "admission_rate": 0})),
    ("prequeue_s", _set("queue", {"enabled": True, "prequeue_s": 604_800}),
     _set("queue", {"enabled": True, "prequeue_s": 604_801})),
]


@pytest.mark.parametrize("field, edge, past", BOUNDS, ids=[b[0] for b in BOUNDS])
async def test_event_body_bounds_hold_at_both_edges(client, database_url, pg, field, edge, past):
    """docs/organisers.md, "The event body": the edge is accepted, one step past it is `422` naming the field,
    and nothing is written."""
    _, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=1, seats=2)
    edge(spec)
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 201, resp.text
    spec = seat_spec(sections=1, rows=1, seats=2)
    past(spec)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", resp.text
    assert field in resp.text
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_a_body_of_250_000_seats_is_valid_and_one_more_is_refused(client, database_url, pg):
    """The same maximum in a JSON body (an event of exactly 250,000 seats is created through the API by
    tests/organisers/test_seat_map_csv.py; here the body's validation accepts it without writing it again)."""
    from gateway.organisers.event_spec import EventSpec

    _, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=1, seats=2)
    _rows(125, 2_000)(spec)
    assert sum(r.seats for s in EventSpec.model_validate(spec).sections for r in s.rows) == 250_000
    _rows(125, 2_000, extra_seats=1)(spec)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", resp.text
    assert "250,000" in resp.text
    assert await pg.fetchval("SELECT count(*) FROM events") == before


# -- docs/organisers.md: what each role may do --------------------------------------------------------------

async def test_each_role_reaches_only_its_routes(client, database_url):
    """`sales` manages nothing of the sale (seat maps, schedules, admission, sale status, devices, scan
    rules, notifications); `door` keys reach the door's routes (devices, scan rules, door figures) and
    nothing else: no figures, orders, refunds, schedules or seat maps. Refusals are `403 forbidden` naming
    the role."""
    _, admin = await new_org(database_url)
    keys = {}
    for role in ("sales", "door"):
        resp = await client.post("/v1/keys", json={"name": role, "role": role}, headers=auth(admin))
        assert resp.status_code == 201, resp.text
        keys[role] = resp.json()["key"]
    event = (await client.post("/v1/events", json=seat_spec(sections=1, rows=1, seats=4, queue=True),
                               headers=auth(admin))).json()
    eid = event["id"]
    csv = {"content": b"section,row,seat,tier\nA,1,1,p1\n", "headers": {"Content-Type": "text/csv"}}
    schedule = {"json": {"sale_opens_at": "2030-01-01T10:00:00Z"}}
    admin_only = [
        ("PUT", f"/v1/events/{eid}/seat-map", csv),
        ("PUT", f"/v1/events/{eid}/schedule", schedule),
        ("PATCH", f"/v1/events/{eid}/admission", {"json": {"rate_per_s": 10}}),
        ("POST", f"/v1/events/{eid}/pause", {}),
        ("GET", "/v1/notifications/dead", {}),
        ("GET", f"/v1/events/{eid}/audit", {}),
        ("DELETE", "/v1/keys/1", {}),
    ]
    door_routes = [
        ("GET", f"/v1/events/{eid}/devices", {}),
        ("PUT", f"/v1/events/{eid}/scan-rules", {"json": {"reentry": {"ga": [], "sections": []}}}),
        ("GET", f"/v1/events/{eid}/scan-rules", {}),
    ]
    sales_routes = [
        ("GET", f"/v1/events/{eid}/stats", {}),
        ("GET", f"/v1/events/{eid}/orders", {}),
        ("POST", "/v1/orders/00000000000000000000000000000000/refund", {}),
        ("GET", f"/v1/events/{eid}", {}),
    ]

    async def call(method: str, path: str, key: str, kw: dict[str, Any]) -> httpx.Response:
        extra = dict(kw)
        headers = {**extra.pop("headers", {}), **auth(key)}
        return await client.request(method, path, headers=headers, **extra)

    def forbidden(resp: httpx.Response, role: str) -> bool:
        if resp.status_code != 403:
            return False
        err = resp.json()["error"]
        return err["code"] == "forbidden" and err["details"]["role"] == role and "admin" in err["details"][
            "allowed_roles"]

    for method, path, kw in admin_only + door_routes:
        resp = await call(method, path, keys["sales"], kw)
        assert forbidden(resp, "sales"), (method, path, resp.status_code, resp.text)
    for method, path, kw in admin_only + sales_routes:
        resp = await call(method, path, keys["door"], kw)
        assert forbidden(resp, "door"), (method, path, resp.status_code, resp.text)
    for method, path, kw in door_routes:
        resp = await call(method, path, keys["door"], kw)
        assert resp.status_code == 200, (method, path, resp.text)
    for method, path, kw in sales_routes:
        resp = await call(method, path, keys["sales"], kw)
        assert resp.status_code in (200, 404), (method, path, resp.text)  # the refund: allowed, no such order
        if resp.status_code == 404:
            assert resp.json()["error"]["code"] == "order_not_found", resp.text
    # Nothing the refused keys sent changed the event.
    after = (await client.get(f"/v1/events/{eid}", headers=auth(admin))).json()
    assert after["status"] == "draft" and after.get("sale_opens_at") is None
    assert [s["seats"] for s in after["sections"]] == [4]


# -- docs/operations.md: metric names ------------------------------------------------------------------------

async def test_the_waiting_room_figures_have_their_documented_names(client, database_url):
    """`flashgate_queue_length`, `flashgate_queue_admitted` and `flashgate_queue_admission_rate_per_second`
    (the organiser's rate in force) per event and organisation."""
    org, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=1, seats=4)
    spec["queue"] = {"enabled": True, "admission_rate": 37}
    event = (await client.post("/v1/events", json=spec, headers=auth(key))).json()
    resp = await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
    assert resp.status_code == 200, resp.text
    scrape = await client.get("/metrics")
    assert scrape.status_code == 200, scrape.text
    labels = f'{{event="{event["id"]}",organisation="{org}"}}'
    values = {}
    for name in ("flashgate_queue_length", "flashgate_queue_admitted", "flashgate_queue_admission_rate_per_second"):
        line = next((ln for ln in scrape.text.splitlines() if ln.startswith(name + labels)), None)
        assert line, (name, labels, [ln for ln in scrape.text.splitlines() if ln.startswith("flashgate_queue")])
        values[name] = float(line.rsplit(" ", 1)[1])
    assert values == {"flashgate_queue_length": 0, "flashgate_queue_admitted": 0,
                      "flashgate_queue_admission_rate_per_second": 37}


# -- docs/dashboard.md and docs/deployment.md: the live stream ------------------------------------------------

async def _first_events(base: str, key: str, event_id: int, count: int) -> tuple[httpx.Headers, list[str], list]:
    """The response headers, the raw lines before the first event, and the first `count` events (name, data)."""
    import json

    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=15)) as c:
        async with c.stream("GET", f"/v1/events/{event_id}/live", headers=auth(key)) as resp:
            assert resp.status_code == 200, await resp.aread()
            preamble: list[str] = []
            events: list[tuple[str, Any]] = []
            name, data = None, []
            async for line in resp.aiter_lines():
                if line == "":
                    if data:
                        events.append((name, json.loads("\n".join(data))))
                        if len(events) == count:
                            break
                    name, data = None, []
                elif line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].strip())
                elif not events and name is None:
                    preamble.append(line)
            return resp.headers, preamble, events


@pytest.mark.parametrize("rows, seats_per_row, seat_view", [(5, 2_000, True), (6, 2_000, False)])
async def test_the_live_stream_is_unbuffered_and_draws_seats_up_to_ten_thousand(live_gateway, database_url, rows,
                                                                                seats_per_row, seat_view):
    """The stream tells proxies not to buffer it (`X-Accel-Buffering: no`), asks clients to retry after 2 s,
    and draws seat by seat only events of at most 10,000 seats (a bigger one gets no `seatmap`)."""
    _, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=rows, seats=seats_per_row)
    async with httpx.AsyncClient(base_url=live_gateway, timeout=30) as c:
        made = await c.post("/v1/events", json=spec, headers=auth(key))
        assert made.status_code == 201, made.text
        eid = made.json()["id"]
        assert (await c.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
    headers, preamble, events = await _first_events(live_gateway, key, eid, 3)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    assert "retry: 2000" in preamble, preamble
    layout = events[0]
    assert layout[0] == "layout" and layout[1]["n_seats"] == rows * seats_per_row
    assert layout[1]["max_seat_view"] == 10_000 and layout[1]["seat_view"] is seat_view
    names = [name for name, _ in events]
    if seat_view:
        assert names == ["layout", "seatmap", "figures"], names
        assert len(events[1][1]["seats"]) == rows * seats_per_row and set(events[1][1]["seats"]) == {"0"}
    else:
        assert "seatmap" not in names and names[:2] == ["layout", "figures"], names


# -- docs/scanning.md: the edges of a scan request -----------------------------------------------------------

async def test_scan_request_edges(client, door):  # noqa: F811
    """`code` any string up to 1,000 characters (not a code: `invalid`, not an error); `scan_id` 1–64 of
    `A-Z a-z 0-9 . _ : -`; a batch takes up to 500 scans."""
    tok = auth(door["north"]["token"])
    resp = await client.post("/v1/scan", json={"code": "x" * 1000}, headers=tok)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"] == "invalid" and resp.json()["reason"] == "malformed" and resp.json()["ticket"] is None
    longest = "A-z0.9_:" * 8
    first = await scan(client, door["north"], door["tickets"][0]["code"], scan_id=longest)
    assert first["scan_id"] == longest and first["result"] == "admitted" and first["replay"] is False
    again = await scan(client, door["south"], door["tickets"][0]["code"], scan_id=longest)  # another device's id
    assert again["result"] == "duplicate" and again["replay"] is False
    for bad in (longest + "x", "", "a/b"):
        resp = await client.post("/v1/scan", json={"code": door["tickets"][1]["code"], "scan_id": bad}, headers=tok)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", (bad, resp.text)
    scans = [{"scan_id": f"b{i}", "code": f"junk-{i}", "scanned_at": 1_750_000_000_000 + i} for i in range(500)]
    resp = await client.post("/v1/scan/batch", json={"scans": scans}, headers=tok)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["scan_id"] for r in results] == [s["scan_id"] for s in scans]
    assert {r["result"] for r in results} == {"invalid"}


# -- docs/operations.md: request ids and label bounds ---------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/events/1/availability", "/v1/keys"])
async def test_a_request_id_is_kept_only_when_it_fits(client, path):
    """`X-Request-ID` a client sent (1–64 of `A-Z a-z 0-9 . _ : -`) comes back as is; anything else is
    replaced by one the gateway made (hot routes and FastAPI routes alike)."""
    fits = "support-case_42:" + "x" * 48
    resp = await client.get(path, headers={"X-Request-ID": fits})
    assert resp.headers["x-request-id"] == fits
    for bad in (fits + "y", "has space", "a/b"):
        resp = await client.get(path, headers={"X-Request-ID": bad})
        rid = resp.headers["x-request-id"]
        assert rid != bad and re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", rid), (bad, rid)


async def test_methods_outside_the_list_are_counted_as_other(client):
    """The `method` label takes GET … OPTIONS, else `OTHER`; a path no route matched is `unmatched`."""
    def count(text: str, method: str, route: str) -> float:
        prefix = "flashgate_http_request_duration_seconds_count{"
        total = 0.0
        for line in text.splitlines():
            if line.startswith(prefix) and f'method="{method}"' in line and f'route="{route}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = (await client.get("/metrics")).text
    for _ in range(3):
        await client.request("BREW", "/no/such/path")
    after = (await client.get("/metrics")).text
    assert count(after, "OTHER", "unmatched") - count(before, "OTHER", "unmatched") == 3
    assert 'method="BREW"' not in after and "/no/such/path" not in after


# -- docs/operations.md, "Postgres down" ---------------------------------------------------------------------

async def test_without_postgres_organiser_routes_say_retry_in_5_s(settings, payment_simulator):
    """Organiser routes that need Postgres answer `503 unavailable` with `Retry-After: 5`, never a 500, and
    `/readyz` stays 200 naming Postgres as degraded."""
    from gateway.api.app import create_app

    nowhere = settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/none"})
    edge = create_app(nowhere)
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as c:
            for method, path in (("GET", "/v1/events"), ("POST", "/v1/keys"), ("GET", "/v1/events/1/orders")):
                resp = await c.request(method, path, headers=auth("fgk_" + "a" * 43))
                assert resp.status_code == 503, (path, resp.text)
                assert resp.json()["error"]["code"] == "unavailable" and resp.headers["retry-after"] == "5", resp.text
            ready = await c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
            assert "postgres" in ready.json()["degraded"], ready.text


# -- README.md "Configuration", docs/organisers.md, docs/operations.md, docs/deployment.md: settings --------

# (variable, where the setting lands, the documented default, a value to set, what it becomes)
DOCUMENTED_SETTINGS = [
    ("FLASHGATE_ENVIRONMENT", "environment", "development", "test", "test"),
    ("FLASHGATE_REDIS_PREFIX", "redis_prefix", "fg", "zz", "zz"),
    ("FLASHGATE_SNAPSHOT_REFRESH_S", "snapshot_refresh_s", 0.1, "0.5", 0.5),
    ("FLASHGATE_SNAPSHOT_STALE_AFTER_S", "snapshot_stale_after_s", 10, "20", 20),
    ("FLASHGATE_MAX_BODY_BYTES", "max_body_bytes", 1_048_576, "2048", 2048),
    ("FLASHGATE_REDIS_TIMEOUT_S", "redis_timeout_s", 1.0, "2.5", 2.5),
    ("FLASHGATE_REDIS_MAX_CONNECTIONS", "redis_max_connections", 64, "8", 8),
    ("FLASHGATE_PG_POOL_SIZE", "pg_pool_size", 10, "3", 3),
    ("FLASHGATE_METRICS_TOKEN", "metrics_token", None, "scrape-me", "scrape-me"),
    ("FLASHGATE_METRICS_EVENT_LABELS", "metrics_event_labels", 20, "5", 5),
    ("FLASHGATE_WORKER_STOP_TIMEOUT_S", "worker_stop_timeout_s", 5, "9", 9),
    ("FLASHGATE_TRUSTED_PROXIES", "trusted_proxies", "", "10.0.0.0/8", "10.0.0.0/8"),
    ("FLASHGATE_API_KEY_FAIL_BURST", "api_key_fail_burst", 10, "4", 4),
    ("FLASHGATE_API_KEY_FAIL_PER_IP_PER_MIN", "api_key_fail_per_ip_per_min", 30, "12", 12),
    ("FLASHGATE_SEAT_MAP_MAX_BYTES", "seat_map_max_bytes", 16 * 1_048_576, "4096", 4096),
    ("FLASHGATE_LEDGER_BATCH", "ledger_batch", 1000, "50", 50),
    ("FLASHGATE_LEDGER_CLAIM_IDLE_MS", "ledger_claim_idle_ms", 15_000, "900", 900),
    ("FLASHGATE_QUEUE_LEASE_MS", "queue_lease_ms", 2000, "700", 700),
    ("FLASHGATE_DATABASE_REPLICA_MAX_LAG_S", "database_replica_max_lag_s", 5, "0.2", 0.2),
    ("FLASHGATE_DATABASE_REPLICA_CHECK_S", "database_replica_check_s", 1, "3", 3),
    ("FLASHGATE_PAYMENTS_BREAKER_FAIL_MAX", "payments.breaker_fail_max", 5, "2", 2),
    ("FLASHGATE_PAYMENTS_BREAKER_RESET_S", "payments.breaker_reset_s", 10, "1.5", 1.5),
    ("FLASHGATE_NOTIFY_WEBHOOK_ALLOW_NETWORKS", "notify.webhook_allow_networks", "", "10.9.0.0/16", "10.9.0.0/16"),
]


@pytest.mark.parametrize("variable, attr, default, value, parsed", DOCUMENTED_SETTINGS,
                         ids=[row[0] for row in DOCUMENTED_SETTINGS])
def test_documented_settings_have_their_names_and_defaults(monkeypatch, tmp_path, variable, attr, default, value,
                                                           parsed):
    """Each variable the documents name is read under that name and defaults to the documented figure."""
    from gateway.core.config import Settings

    monkeypatch.chdir(tmp_path)  # no .env file
    import os
    for name in list(os.environ):
        if name.startswith("FLASHGATE_"):
            monkeypatch.delenv(name)

    def read(settings: Any) -> Any:
        for part in attr.split("."):
            settings = getattr(settings, part)
        return settings

    assert read(Settings(data_dir=tmp_path)) == default
    monkeypatch.setenv(variable, value)
    assert read(Settings(data_dir=tmp_path)) == parsed


# -- README.md "The flashgate command": `flashgate audit EVENT [--json]`, exit 1 on a violation ---------------

async def test_the_audit_command_exits_1_on_a_violation(client, database_url, settings, redis_sync):
    import asyncio
    import json
    import subprocess
    import sys

    from gateway.store.keys import event_key
    from tests.utils.live import stack_env

    def audit(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", str(eid), *extra], env=stack_env(settings),
                              capture_output=True, text=True, timeout=120)

    _, key = await new_org(database_url)
    made = await client.post("/v1/events", json=seat_spec(sections=1, rows=1, seats=4), headers=auth(key))
    eid = made.json()["id"]
    assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
    clean = await asyncio.to_thread(audit, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["verdict"] == "pass"
    # A seat marked held with no hold holding it: what no script may leave behind.
    redis_sync.setbit(event_key(settings.redis_prefix, eid, "held"), 2, 1)
    broken = await asyncio.to_thread(audit, "--json")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    assert report["verdict"] == "FAIL" and [c for c in report["checks"] if not c["ok"]], report
    human = await asyncio.to_thread(audit)
    assert human.returncode == 1 and "FAIL" in human.stdout, human.stdout


# -- docs/organisers.md, "Scheduling": the schedule is sent whole ------------------------------------------------

async def test_an_omitted_time_is_cleared_from_the_schedule(client, database_url):
    from datetime import UTC, datetime, timedelta

    def at(hours: int) -> str:
        return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()

    _, key = await new_org(database_url)
    eid = (await client.post("/v1/events", json=seat_spec(sections=1, rows=1, seats=2), headers=auth(key))).json()["id"]
    both = await client.put(f"/v1/events/{eid}/schedule", json={"sale_opens_at": at(10), "sale_closes_at": at(20)},
                            headers=auth(key))
    assert both.status_code == 200, both.text
    event = (await client.get(f"/v1/events/{eid}", headers=auth(key))).json()
    assert event["schedule"]["sale_opens_at"] and event["schedule"]["sale_closes_at"], event["schedule"]
    opens_only = await client.put(f"/v1/events/{eid}/schedule", json={"sale_opens_at": at(12)}, headers=auth(key))
    assert opens_only.status_code == 200, opens_only.text
    event = (await client.get(f"/v1/events/{eid}", headers=auth(key))).json()
    assert event["schedule"]["sale_opens_at"] and event["schedule"]["sale_closes_at"] is None, event["schedule"]
    cleared = await client.put(f"/v1/events/{eid}/schedule", json={}, headers=auth(key))
    assert cleared.status_code == 200, cleared.text
    event = (await client.get(f"/v1/events/{eid}", headers=auth(key))).json()
    assert event["schedule"]["sale_opens_at"] is None and event["schedule"]["sale_closes_at"] is None, event["schedule"]
    assert (await client.get(f"/v1/events/{eid}/public")).status_code == 404  # unscheduled drafts stay private


# -- docs/operations.md, "Metrics" and "Alerts": the names in the tables are the names served ----------------

def _doc_section(path: str, start: str, end: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    return text[text.index(start):text.index(end, text.index(start))]


def _documented_metrics() -> list[str]:
    """Every metric named in the first column of the Metrics tables (`_x` continues the row's first name)."""
    names = []
    for line in _doc_section("docs/operations.md", "### Metrics", "### Label bounds").splitlines():
        if not line.startswith("| `flashgate_"):
            continue
        first = line.split("|")[1]
        tokens = re.findall(r"`([a-z_]+)`", first)
        stem = tokens[0].rsplit("_", 1)[0]
        for token in tokens:
            names.append(stem + token if token.startswith("_") else token)
    return names


async def test_every_documented_metric_is_served(client, database_url):
    names = _documented_metrics()
    assert len(names) >= 25 and "flashgate_payments_pacing_in_flight" in names, names
    _, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=1, seats=4)
    spec["queue"] = {"enabled": True}
    eid = (await client.post("/v1/events", json=spec, headers=auth(key))).json()["id"]
    assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
    assert (await client.get(f"/v1/events/{eid}/availability")).status_code == 200
    scrape = (await client.get("/metrics")).text
    served = set(re.findall(r"^(flashgate_[a-z_]+)[{ ]", scrape, re.M))
    served |= {n[:-len(suffix)] for n in served for suffix in ("_bucket", "_count", "_sum") if n.endswith(suffix)}
    # Counted from the first such event on (a refusal, a read with a replica set): tests/observability/
    # test_metrics.py and tests/scaleout/test_pg_replica.py see them served.
    later = {"flashgate_rate_limited_total", "flashgate_pg_reads_total"}
    replica = {n for n in names if n.startswith("flashgate_pg_replica_")}  # only with DATABASE_REPLICA_URL
    missing = [n for n in names if n not in served and n not in later | replica]
    assert not missing, (missing, sorted(served))
    assert len(replica) == 4
    # The breaker gauge: one series per breaker and state, 1 for the state it is in.
    states = {}
    for line in scrape.splitlines():
        if line.startswith("flashgate_breaker_state{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            states.setdefault(labels["breaker"], {})[labels["state"]] = float(line.rsplit(" ", 1)[1])
    assert set(states) == {"payments", "smtp"}, states
    for breaker, by_state in states.items():
        assert set(by_state) == {"closed", "open", "half-open"} and sum(by_state.values()) == 1, (breaker, by_state)


def test_the_alert_table_matches_the_rules():
    """Each alert of the table exists with the documented severity and duration, and no rule is undocumented."""
    import yaml
    from pathlib import Path

    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "platform/observability/alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    table = _doc_section("docs/operations.md", "| alert | fires when |", "### Logs")
    documented = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| `Flashgate"):
            continue
        name, severity = re.match(r"\| `(\w+)` \((\w+)\)", line).groups()
        fires = line.split("|")[2]
        n, unit = re.search(r"for (\d+) (min|s)\b", fires).groups()
        documented[name] = (severity, f"{n}{'m' if unit == 'min' else 's'}")
    assert set(documented) == set(by_name), (sorted(documented), sorted(by_name))
    for name, (severity, duration) in documented.items():
        assert by_name[name]["labels"]["severity"] == severity, name
        assert by_name[name]["for"] == duration, (name, by_name[name]["for"], duration)


async def test_scan_bodies_over_one_mib_are_refused(client, door):  # noqa: F811
    """docs/scanning.md, error table: `413 body_too_large` for a body over 1 MiB, on both scan routes; nothing
    of it is counted."""
    tok = {**auth(door["north"]["token"]), "content-type": "application/json"}
    code = door["tickets"][0]["code"]
    pad = 1_048_576 - len(b'{"code":"","scan_id":"big-1","direction":"in"}') - len(code) + 1
    over = b'{"code":"%s","scan_id":"big-1","direction":"in"%s}' % (code.encode(), b" " * pad)
    assert len(over) == 1_048_577
    for path in ("/v1/scan", "/v1/scan/batch"):
        resp = await client.post(path, content=over, headers=tok)
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large", (path, resp.text)
    fits = over[:-2] + b"}"  # 1,048,576 bytes
    resp = await client.post("/v1/scan", content=fits, headers=tok)
    assert resp.status_code == 200 and resp.json()["result"] == "admitted", resp.text


# -- every `flashgate …` command the documents show is one the command accepts ---------------------------------

_PLACEHOLDERS = {"EVENT": "7", "ID": "7", "ORG": "3", "FILE": "map.csv", "BODY.json": "body.json", "NAME": "Org",
                 "P": "9000", "N": "4"}


def _documented_commands() -> list[str]:
    """Each `flashgate …` command in the documents' code blocks and inline code, brackets taken as given."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found: list[str] = []
    for doc in ("README.md", "docs/loadtesting.md", "docs/organisers.md", "docs/deployment.md", "docs/audit.md",
                "docs/operations.md", "docs/scaling.md", "docs/scanning.md", "docs/dashboard.md"):
        text = (root / doc).read_text().replace("\\\n", " ")
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
        for line in (ln for block in blocks for ln in block.splitlines()):
            line = line.split(" #", 1)[0]
            for part in line.split("&"):
                m = re.search(r"(?:^|\s|/)(flashgate\s+[a-z].*)$", part.strip())
                if m:
                    found.append(m.group(1).strip())
        for inline in re.findall(r"`((?:\.venv/bin/)?flashgate [a-z][^`]*)`", text):
            found.append(re.sub(r"^\.venv/bin/", "", inline))
    return sorted(set(found))


def _argv(command: str) -> list[str]:
    import shlex

    words = []
    for word in shlex.split(command.replace("[", " ").replace("]", " "))[1:]:
        words.append(_PLACEHOLDERS.get(word, word))
    return words


def test_every_documented_command_parses():
    from gateway.cli import build_parser

    commands = _documented_commands()
    must = {"flashgate org key revoke 12 34", "flashgate event import FILE --spec BODY.json --org ORG",
            "flashgate loadtest flash_sale --target https://staging.example --api-key fgk_... "
            "--payments-url https://staging-sim.example --vus 1000",
            "flashgate up [--port P] [--workers N] [--demo]", "flashgate audit EVENT [--json]"}
    assert must <= {re.sub(r"\s+", " ", c) for c in commands}, commands
    for command in commands:
        argv = _argv(command)
        if argv in (["loadtest", "--help"],) or argv == ["loadtest"] or argv == ["audit"]:
            continue  # `--help` exits; a bare name is the command named in a sentence
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse refuses what it does not know
            raise AssertionError(f"documented command refused: {command!r} ({argv})") from exc
        if argv[0] == "worker":
            from gateway.workers import WORKERS
            assert ns.name in WORKERS or ns.name == "Org", command  # NAME: the README's placeholder


# -- docs/organisers.md: another organisation's events, keys and orders answer 404 like missing ones -----------

async def test_another_organisations_keys_and_orders_look_missing(client, app, database_url, sim):
    from tests.scanning.conftest import buy, drain_ledger
    from tests.utils.factories import open_event

    _, key_a = await new_org(database_url)
    _, key_b = await new_org(database_url)
    a_keys = (await client.get("/v1/keys", headers=auth(key_a))).json()["keys"]
    event = await open_event(client, key_a, seat_spec(sections=1, rows=1, seats=4))
    order = await buy(client, event["id"], {"seats": ["A-1-1"]})

    def same(resp: httpx.Response, missing: httpx.Response) -> None:
        assert resp.status_code == missing.status_code == 404, (resp.text, missing.text)
        assert resp.json()["error"]["code"] == missing.json()["error"]["code"]
        assert resp.json()["error"]["message"].replace(str(a_keys[0]["id"]), "N").replace(order["order_id"], "N") \
            == missing.json()["error"]["message"].replace("999999", "N").replace(_missing_order, "N")

    _missing_order = "0" * 32
    same(await client.delete(f"/v1/keys/{a_keys[0]['id']}", headers=auth(key_b)),
         await client.delete("/v1/keys/999999", headers=auth(key_b)))
    same(await client.post(f"/v1/orders/{order['order_id']}/refund", headers=auth(key_b)),
         await client.post(f"/v1/orders/{_missing_order}/refund", headers=auth(key_b)))
    same(await client.get(f"/v1/events/{event['id']}/orders", headers=auth(key_b)),
         await client.get("/v1/events/999999/orders", headers=auth(key_b)))
    # Nothing happened to organisation A: its key works and its order is paid.
    assert (await client.get("/v1/keys", headers=auth(key_a))).json()["keys"][0]["revoked_at"] is None
    await drain_ledger(app)
    orders = (await client.get(f"/v1/events/{event['id']}/orders", headers=auth(key_a))).json()
    assert [o["status"] for o in orders["orders"] if o["order_id"] == order["order_id"]] == ["paid"], orders


async def test_scan_rules_and_device_routes_refuse_what_the_event_does_not_have(client, door):  # noqa: F811
    """`PUT /scan-rules`: unknown section names are `422` too and change nothing; `GET` gives the same answer as
    the last `PUT`; a device of an unknown event is `404 event_not_found`."""
    key = auth(door["api_key"])
    url = f"/v1/events/{door['id']}/scan-rules"
    assert (await client.get(url, headers=key)).json() == {"reentry": {"ga": [], "sections": []}}  # default: none
    put = await client.put(url, json={"reentry": {"ga": ["floor"], "sections": ["A"]}}, headers=key)
    assert put.status_code == 200 and put.json() == {"reentry": {"ga": ["floor"], "sections": ["A"]}}, put.text
    bad = await client.put(url, json={"reentry": {"ga": [], "sections": ["Z"]}}, headers=key)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error", bad.text
    assert (await client.get(url, headers=key)).json() == put.json()
    gone = await client.delete(f"/v1/events/999999/devices/{door['north']['device_id']}", headers=key)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "event_not_found", gone.text
    assert (await scan(client, door["north"], door["tickets"][0]["code"]))["result"] == "admitted"  # not revoked


@pytest.mark.parametrize("argv", [["up"], ["migrate"], ["serve"], ["worker"], ["org"], ["org", "create"],
                                  ["org", "key", "create"], ["org", "key", "list"], ["org", "key", "revoke"],
                                  ["event", "import"], ["demo"], ["audit"], ["loadtest"]])
def test_every_command_has_help(argv, capsys):
    """README.md: "Every command has `--help`"."""
    from gateway.cli import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and " ".join(argv) in out.splitlines()[0], out[:200]


# -- README.md / docs/operations.md: FLASHGATE_METRICS_ENABLED=0 ---------------------------------------------

_SCRAPE_TWICE = """
import asyncio, httpx
from gateway.api.app import create_app
from gateway.core.config import Settings

async def main():
    edge = create_app(Settings())
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            for _ in range(3):
                await c.get("/v1/events/1/availability")
                await c.get("/healthz")
            print((await c.get("/metrics")).text)

asyncio.run(main())
"""


@pytest.mark.parametrize("enabled", ["1", "0"])
def test_metrics_switch_turns_the_per_request_figures_off_only(settings, payment_simulator, enabled):
    """`0` turns the per-request figures off; the figures read from Redis are still served."""
    import subprocess
    import sys

    from tests.utils.live import stack_env

    env = {**stack_env(settings), "FLASHGATE_METRICS_ENABLED": enabled}
    run = subprocess.run([sys.executable, "-c", _SCRAPE_TWICE], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    served = set(re.findall(r"^(flashgate_[a-z_]+?)(?:_bucket|_count|_sum|_total)?[{ ]", run.stdout, re.M))
    assert "flashgate_redis_up" in served and "flashgate_breaker_state" in served, served
    per_request = {"flashgate_http_request_duration_seconds", "flashgate_redis_call_duration_seconds"}
    if enabled == "1":
        assert per_request <= served, served
    else:
        assert not per_request & served, served


# -- docs/operations.md ("Runbook: Redis", step 3), docs/known-limitations.md, docs/scaling.md --------------------

async def test_holds_answered_503_are_given_back_even_if_the_buyer_never_returns(app, client, database_url):
    """A hold whose answer was lost to a Redis outage (the worker answered 503, Redis made it later) is given
    back by that worker after its next snapshot refresh that reaches Redis, without the buyer asking again."""
    from tests.utils.factories import buyer, open_event

    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(sections=1, rows=1, seats=2, limit=2))
    lost = await buyer(client)
    made = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-1"]}, headers=lost)
    assert made.status_code == 201, made.text
    other = await buyer(client)
    refused = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-1"]}, headers=other)
    assert refused.status_code == 409, refused.text  # held: the seat is the lost hold's
    # What the worker keeps when Redis does not answer a hold call it had sent: the buyer never learnt the id.
    buyer_id = app.gateway.gate.buyer(lost["Authorization"].split(" ", 1)[1])
    app.gateway.holds.unanswered.setdefault(buyer_id, []).append((event["id"], made.json()["hold_id"]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        again = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["A-1-1"]}, headers=other)
        if again.status_code == 201:
            break
        assert again.status_code == 409 and loop.time() < deadline, again.text
        await asyncio.sleep(0.1)
    assert buyer_id not in app.gateway.holds.unanswered


# -- docs/organisers.md, "Webhooks": the secret is never shown back ----------------------------------------------

async def test_the_webhook_secret_is_never_shown_back(settings, database_url):
    from tests.organisers.conftest import app_client

    secret = "whsec-claims-" + "s" * 20
    _, key = await new_org(database_url)
    allowed = settings.notify.model_copy(update={"webhook_allow_networks": "127.0.0.0/8"})
    async with app_client(settings, notify=allowed) as client:
        spec = {**seat_spec(sections=1, rows=1, seats=2),
                "webhook": {"url": "http://127.0.0.1:9/hook", "secret": secret}}
        made = await client.post("/v1/events", json=spec, headers=auth(key))
        assert made.status_code == 201, made.text
        eid = made.json()["id"]
        assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
        answers = [made, await client.get(f"/v1/events/{eid}", headers=auth(key)),
                   await client.get("/v1/events", headers=auth(key)),
                   await client.get(f"/v1/events/{eid}/public"),
                   await client.get(f"/v1/events/{eid}/stats", headers=auth(key))]
        for resp in answers:
            assert resp.status_code == 200 or resp is made, resp.text
            assert secret not in resp.text, resp.request.url
        assert made.json()["webhook"] == {"url": "http://127.0.0.1:9/hook"}, made.json()  # kept, without its secret
