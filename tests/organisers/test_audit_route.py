"""`GET /v1/events/{id}/audit`: the audit's verdict over HTTP, for the organisation's admin keys only."""

from __future__ import annotations

import pytest

from gateway.organisers.history import CHECKS, COMPLETE_CHECK
from gateway.store.keys import event_keys
from gateway.store.redis import redis_client
from gateway.store.scripts import Scripts
from tests.loadtest.mutations import SOURCE_DIR, apply
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


async def test_admin_gets_the_verdict_with_the_history_checks(client, database_url, settings, tmp_path):
    _, admin = await new_org(database_url)
    event = await open_event(client, admin, seat_spec(sections=1, rows=1, seats=10, limit=2))
    eid = event["id"]
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-1"]}, headers=me)
    assert hold.status_code == 201, hold.text
    assert (await client.delete(f"/v1/holds/{hold.json()['hold_id']}", headers=me)).status_code == 200

    resp = await client.get(f"/v1/events/{eid}/audit", headers=auth(admin))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["event_id"] == eid and body["verdict"] == "pass", body
    checks = {c["name"]: c for c in body["checks"]}
    assert checks[COMPLETE_CHECK]["ok"] and checks[COMPLETE_CHECK]["detail"].startswith("2 record(s)")
    assert all(checks[name]["ok"] for name in CHECKS.values())

    # A planted bug (the per-buyer limit checked per request) lets one buyer hold 3 with a limit of 2.
    redis = redis_client(settings.redis_url)
    try:
        bad = Scripts(redis, apply("limit_per_request", SOURCE_DIR, tmp_path / "lua"))
        keys = event_keys(settings.redis_prefix, eid)
        assert (await bad.call("hold", keys, [f"{eid}-greedy-1", "greedy", 2, 3, 4])).ok
        assert (await bad.call("hold", keys, [f"{eid}-greedy-2", "greedy", 1, 5])).ok
    finally:
        await redis.aclose()
    body = (await client.get(f"/v1/events/{eid}/audit", headers=auth(admin))).json()
    assert body["verdict"] == "FAIL"
    failed = {c["name"]: c["detail"] for c in body["checks"] if not c["ok"]}
    assert list(failed) == [CHECKS["buyer_over_limit"]], failed
    assert "buyer greedy has 3 > limit 2" in failed[CHECKS["buyer_over_limit"]]


async def test_only_the_owner_s_admin_keys_get_it(client, database_url):
    _, admin = await new_org(database_url)
    eid = (await open_event(client, admin, seat_spec(sections=1, rows=1, seats=5)))["id"]
    made = await client.post("/v1/keys", json={"name": "box office", "role": "sales"}, headers=auth(admin))
    sales = made.json()["key"]

    resp = await client.get(f"/v1/events/{eid}/audit", headers=auth(sales))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden" and resp.json()["error"]["details"]["allowed_roles"] == ["admin"]

    _, other = await new_org(database_url)
    for key, event_id in ((other, eid), (admin, eid + 10**9)):  # another organisation's event = a missing one
        resp = await client.get(f"/v1/events/{event_id}/audit", headers=auth(key))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "event_not_found"

    resp = await client.get(f"/v1/events/{eid}/audit")
    assert resp.status_code == 401


async def test_the_audit_answers_while_the_ledger_writes(app, client, database_url, sim):
    """An organiser asks for the audit while the ledger worker is writing sales to Postgres: every answer
    is a verdict (failing while sales are still on their way is fine), never a 500 — the Postgres checks
    read one consistent snapshot (orders written between two of its queries made it crash)."""
    import asyncio

    from gateway.workers.ledger import LedgerWorker

    _, admin = await new_org(database_url)
    event = await open_event(client, admin, seat_spec(ga={"floor": 60}))
    worker = LedgerWorker(app.gateway.runtime, consumer="audit-race")
    statuses = []
    for i in range(30):
        me = await buyer(client)
        held = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
        assert held.status_code == 201, held.text
        paid = await client.post(f"/v1/holds/{held.json()['hold_id']}/checkout", json={},
                                 headers={**me, "Idempotency-Key": f"audit-race-{i:03d}"})
        assert paid.status_code == 201, paid.text

        async def audit():
            statuses.append((await client.get(f"/v1/events/{event['id']}/audit", headers=auth(admin))).status_code)

        await asyncio.gather(worker.step(), *(audit() for _ in range(4)))
    while await worker.step():
        pass
    assert set(statuses) == {200}, statuses
    final = (await client.get(f"/v1/events/{event['id']}/audit", headers=auth(admin))).json()
    assert final["verdict"] == "pass", [c for c in final["checks"] if not c["ok"]]
