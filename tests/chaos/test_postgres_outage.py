"""Postgres stopped in the middle of a sale (docs/operations.md, "Runbook: processes, Postgres and the
payment provider"): buyers keep buying; every organiser route answers either from Redis or with
`503 unavailable` + `Retry-After` in the common error shape, never a 500; when Postgres is back
they all work again without restarting anything, and the audit is clean.

A private Postgres (this test stops it) behind a real gateway process and a real ledger worker."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time

import httpx
import pytest

from gateway.db.migrate import migrate
from gateway.stack.embedded import MissingBinary, PostgresServer
from tests.chaos.stack_faults import buy, wait_audit_clean
from tests.conftest import need
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import stack_env, start_gateway, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def own_postgres(tmp_root):
    """A private Postgres this test may stop and start (never the shared one)."""
    try:
        server = PostgresServer(tmp_root / f"pg-chaos-{secrets.token_hex(3)}", fast_unsafe=True).start()
    except MissingBinary as exc:
        need(str(exc))
    yield server
    server.stop()


def organiser_requests(event_id: int, draft_id: int, order_id: str, device_id: str,
                       key_id: int) -> list[tuple[str, str, dict | bytes]]:
    """One request per organiser route: (method, path, JSON body or {}, or CSV bytes)."""
    ev = f"/v1/events/{event_id}"
    return [
        ("PUT", f"/v1/events/{draft_id}/seat-map", b"section,row,seat,tier\nA,1,1,p1\nA,1,2,p1\n"),
        ("POST", "/v1/events", seat_spec(ga={"floor": 10}, name="Outage Night")),
        ("GET", "/v1/events", {}),
        ("GET", ev, {}),
        ("POST", f"{ev}/pause", {}),
        ("POST", f"{ev}/open", {}),
        ("PATCH", f"{ev}/admission", {"rate_per_s": 50}),
        ("PUT", f"{ev}/schedule", {"sale_opens_at": None, "sale_closes_at": None}),
        ("POST", "/v1/keys", {"name": "outage", "role": "sales"}),
        ("GET", "/v1/keys", {}),
        ("DELETE", f"/v1/keys/{key_id}", {}),
        ("GET", f"{ev}/orders", {}),
        ("POST", f"/v1/orders/{order_id}/refund", {"reason": "outage test"}),
        ("GET", "/v1/notifications/dead", {}),
        ("POST", "/v1/notifications/dead/replay", {}),
        ("GET", f"{ev}/stats", {}),
        ("GET", f"{ev}/audit", {}),
        ("POST", f"{ev}/devices", {"gate": "north"}),
        ("GET", f"{ev}/devices", {}),
        ("DELETE", f"{ev}/devices/{device_id}", {}),
        ("GET", f"{ev}/scan-rules", {}),
        ("PUT", f"{ev}/scan-rules", {"reentry": {"ga": ["floor"]}}),
        ("GET", f"{ev}/scans", {}),
    ]


async def send(client: httpx.AsyncClient, key: str, method: str, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return await client.request(method, path, content=body, headers={**auth(key), "Content-Type": "text/csv"})
    return await client.request(method, path, headers=auth(key), **({"json": body} if body else {}))


async def live_status(client: httpx.AsyncClient, key: str, event_id: int) -> tuple[int, bytes]:
    """Status and first bytes of the live figures stream."""
    async with client.stream("GET", f"/v1/events/{event_id}/live", headers=auth(key)) as resp:
        first = b""
        if resp.status_code == 200:
            async for chunk in resp.aiter_bytes():
                first = chunk
                break
        else:
            first = await resp.aread()
        return resp.status_code, first


def assert_unavailable(resp: httpx.Response, what: str) -> None:
    assert resp.status_code == 503, f"{what}: {resp.status_code} {resp.text}"
    assert resp.json()["error"]["code"] == "unavailable", f"{what}: {resp.text}"
    assert int(resp.headers["retry-after"]) >= 1, what


async def test_postgres_stopped_mid_sale(own_postgres, settings, tmp_root):
    db_url = own_postgres.url("postgres")
    await migrate(db_url)
    local = settings.model_copy(update={"database_url": db_url, "redis_prefix": settings.redis_prefix + ":pgchaos"})
    env = stack_env(local)
    _, key = await new_org(db_url)
    _, fresh_key = await new_org(db_url)  # never used before the outage: its check needs Postgres
    with start_gateway(local, tmp_root, workers=1) as url, start_worker(local, "ledger", tmp_root):
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            event = (await send(client, key, "POST", "/v1/events", seat_spec(ga={"floor": 500}))).json()
            event_id = event["id"]
            assert (await send(client, key, "POST", f"/v1/events/{event_id}/open", {})).status_code == 200
            before = await asyncio.gather(*(buy(client, event_id, f"pg-before-{i}") for i in range(5)))
            assert all(b["status"] == 201 for b in before), before
            device = (await send(client, key, "POST", f"/v1/events/{event_id}/devices", {"gate": "main"})).json()
            new_key = (await send(client, key, "POST", "/v1/keys", {"name": "spare", "role": "sales"})).json()
            deadline = time.monotonic() + 30  # the organiser sees the 5 orders once the ledger wrote them
            while len((await send(client, key, "GET", f"/v1/events/{event_id}/orders", {})).json()["orders"]) < 5:
                assert time.monotonic() < deadline, "the ledger did not write the orders"
                await asyncio.sleep(0.2)
            draft = (await send(client, key, "POST", "/v1/events", seat_spec(name="Draft Night"))).json()
            requests = organiser_requests(event_id, draft["id"], before[0]["body"]["order_id"], device["device_id"],
                                          new_key["id"])

            await asyncio.to_thread(own_postgres.stop)
            try:
                # Buyers notice nothing: holds and checkouts never touch Postgres.
                during = await asyncio.gather(*(buy(client, event_id, f"pg-during-{i}") for i in range(12)))
                assert all(b["status"] == 201 for b in during), [b for b in during if b["status"] != 201]
                assert (await client.get(f"/v1/events/{event_id}/availability")).status_code == 200
                # The operator's view: still ready to sell, Postgres named as degraded.
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
                assert ready.json()["degraded"] == ["postgres"], ready.text
                # The sales of the outage wait in the ledger stream, and the metrics say so.
                metrics = (await client.get("/metrics")).text
                pending = re.search(rf'flashgate_ledger_pending_entries{{event="{event_id}",[^}}]*}} (\S+)', metrics)
                assert pending and float(pending.group(1)) >= 12, metrics[-2000:]

                # Doors go on: the device's manifest and a scan of a ticket sold before the outage.
                door = auth(device["token"])
                manifest = await client.get("/v1/scan/manifest", headers=door)
                assert manifest.status_code == 200, manifest.text
                scan = await client.post("/v1/scan", json={"code": before[1]["body"]["tickets"][0]["code"]}, headers=door)
                assert scan.status_code == 200 and scan.json()["result"] == "admitted", scan.text

                # An API key this gateway has not checked yet cannot be checked: 503, not 401 nor 500.
                assert_unavailable(await send(client, fresh_key, "GET", "/v1/events", {}), "unknown key lookup")
                answers = {}
                for method, path, body in requests:
                    answers[f"{method} {path}"] = await send(client, key, method, path, body)
                # Figures, dead letters and their replay live in Redis: they answer. Every other organiser
                # route needs Postgres and says so: 503 unavailable with Retry-After, never a 500.
                from_redis = {f"GET /v1/events/{event_id}/stats", "GET /v1/notifications/dead",
                              "POST /v1/notifications/dead/replay"}
                for route, resp in answers.items():
                    if route in from_redis:
                        assert resp.status_code == 200, f"{route}: {resp.status_code} {resp.text}"
                    else:
                        assert_unavailable(resp, route)
                totals = answers[f"GET /v1/events/{event_id}/stats"].json()["totals"]
                assert totals["sold"] == 17 and totals["available"] == 483 + 100
                status, first = await live_status(client, key, event_id)
                assert status == 200 and first.startswith((b"event:", b"id:", b"data:", b":", b"retry:")), first
            finally:
                await asyncio.to_thread(own_postgres.start)

            # Back: every route works again, without restarting the gateway (a retry or two at most,
            # while the pool replaces its broken connections).
            for method, path, body in requests:
                deadline = time.monotonic() + 30
                while True:
                    resp = await send(client, key, method, path, body)
                    if resp.status_code != 503 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.3)
                if path.endswith("/admission"):  # the event's own answer: it has no waiting room
                    assert resp.status_code == 409 and resp.json()["error"]["code"] == "invalid_state", resp.text
                else:
                    assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
            resp = await send(client, fresh_key, "GET", "/v1/events", {})
            assert resp.status_code == 200 and resp.json() == {"events": []}
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
            assert (await live_status(client, key, event_id))[0] == 200
            result = await wait_audit_clean(env, event_id)
            assert result.returncode == 0, result.stdout + result.stderr
            orders = (await send(client, key, "GET", f"/v1/events/{event_id}/orders?limit=1000", {})).json()["orders"]
            assert len(orders) == 17
            assert sum(o["status"] == "refunded" for o in orders) == 1
        # Each refused request left a warning naming its route, never an error with a traceback.
        log = (tmp_root / f"gateway-{url.rsplit(':', 1)[1]}.log").read_text()
        refused = [json.loads(line) for line in log.splitlines() if '"Postgres unavailable"' in line]
        assert refused and all(line["level"] == "warning" for line in refused)
        assert any(line.get("path", "").endswith("/refund") for line in refused)
        assert "unhandled error" not in log
