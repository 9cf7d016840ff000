"""Scheduled sales: the sale (and its pre-queue) opens and closes by itself; times in order only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gateway.organisers import schedule
from gateway.workers import expiry
from tests.utils.factories import auth, buyer, new_org, seat_spec

pytestmark = pytest.mark.anyio


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _create(client, key: str, **fields) -> dict:
    queue = fields.pop("queue", None)
    spec = {**seat_spec(ga={"floor": 20}), **fields}
    if queue:
        spec["queue"] = queue
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _status(client, key: str, event_id: int) -> str:
    return (await client.get(f"/v1/events/{event_id}", headers=auth(key))).json()["status"]


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.1)


async def test_the_sale_opens_and_closes_by_itself(app, client, database_url):
    _, key = await new_org(database_url)
    opens, closes = at(2), at(5)
    event = await _create(client, key, sale_opens_at=opens, sale_closes_at=closes)
    eid = event["id"]
    assert event["status"] == "draft"
    assert event["schedule"]["sale_opens_at"] == datetime.fromisoformat(opens).isoformat()
    # announced: public before it opens, with its times; nothing to buy yet
    public = (await client.get(f"/v1/events/{eid}/public")).json()
    assert public["status"] == "draft" and public["sale_opens_at"] and public["sale_closes_at"]
    me = await buyer(client)
    early = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=me)
    assert early.status_code in (404, 409), early.text
    stop = asyncio.Event()
    worker = asyncio.create_task(expiry.run(app.gateway.runtime, stop))
    try:
        await _until(lambda: _status_is(client, key, eid, "on_sale"))
        assert datetime.now(UTC) >= datetime.fromisoformat(opens)
        public = (await client.get(f"/v1/events/{eid}/public")).json()
        assert public["status"] == "on_sale"
        assert datetime.fromisoformat(public["sale_closes_at"]) == datetime.fromisoformat(closes)
        hold = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=me)
        assert hold.status_code == 201, hold.text
        await _until(lambda: _status_is(client, key, eid, "closed"))
        assert datetime.now(UTC) >= datetime.fromisoformat(closes)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
    late = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=me)
    assert late.status_code in (404, 409) and late.json()["error"]["code"] != "internal_error"


async def _status_is(client, key: str, event_id: int, status: str) -> bool:
    return await _status(client, key, event_id) == status


async def test_a_waiting_room_sale_opens_its_pre_queue_first(app, client, database_url):
    _, key = await new_org(database_url)
    event = await _create(client, key, sale_opens_at=at(60), queue={"enabled": True, "prequeue_s": 30})
    eid = event["id"]
    assert event["schedule"]["prequeue_opens_at"] == (
        datetime.fromisoformat(event["schedule"]["sale_opens_at"]) - timedelta(seconds=30)).isoformat()
    runtime = app.gateway.runtime
    assert eid not in (await schedule.run_due(runtime))["prequeue"]  # not yet
    # move the schedule so the pre-queue is due, the sale not yet
    moved = await client.put(f"/v1/events/{eid}/schedule", json={"sale_opens_at": at(20)}, headers=auth(key))
    assert moved.status_code == 200, moved.text
    done = await schedule.run_due(runtime)
    assert eid in done["prequeue"] and eid not in done["open"]
    assert await _status(client, key, eid) == "draft"
    me = await buyer(client)
    joined = await client.post(f"/v1/events/{eid}/queue", headers=me)
    assert joined.status_code == 201 and joined.json()["status"] == "prequeue", joined.text
    assert (await client.get(f"/v1/events/{eid}/public")).json()["queue"] == {"enabled": True, "prequeue": True}
    # now the sale is due: it opens and the pre-queue is shuffled into the queue
    await client.put(f"/v1/events/{eid}/schedule", json={"sale_opens_at": at(-1)}, headers=auth(key))
    done = await schedule.run_due(runtime)
    assert eid in done["open"] and await _status(client, key, eid) == "on_sale"
    stats = await app.gateway.queue_admin.stats(eid)
    assert stats["phase"] == "open" and stats["prequeue"]["size"] == 1
    assert eid not in (await schedule.run_due(runtime))["open"]  # done once


async def test_a_sale_paused_by_hand_stays_paused_and_still_closes(app, client, database_url):
    _, key = await new_org(database_url)
    event = await _create(client, key, sale_opens_at=at(-5))
    eid = event["id"]
    runtime = app.gateway.runtime
    assert eid in (await schedule.run_due(runtime))["open"]
    assert (await client.post(f"/v1/events/{eid}/pause", headers=auth(key))).status_code == 200
    await schedule.run_due(runtime)
    assert await _status(client, key, eid) == "paused"
    resp = await client.put(f"/v1/events/{eid}/schedule",
                            json={"sale_opens_at": event["schedule"]["sale_opens_at"], "sale_closes_at": at(-1)},
                            headers=auth(key))
    assert resp.status_code == 200, resp.text
    assert eid in (await schedule.run_due(runtime))["close"] and await _status(client, key, eid) == "closed"


async def test_two_schedulers_at_once_open_an_event_once(app, client, database_url, settings):
    from gateway.core.runtime import Runtime

    _, key = await new_org(database_url)
    events = [(await _create(client, key, sale_opens_at=at(-1)))["id"] for _ in range(3)]
    other = Runtime.from_settings(settings)
    try:
        rounds = await asyncio.gather(schedule.run_due(app.gateway.runtime), schedule.run_due(other),
                                      schedule.run_due(app.gateway.runtime))
    finally:
        await other.close()
    opened = [eid for r in rounds for eid in r["open"] if eid in events]
    assert sorted(opened) == sorted(events), rounds
    for eid in events:
        assert await _status(client, key, eid) == "on_sale"


@pytest.mark.parametrize("fields, where", [
    ({"sale_opens_at": at(100), "sale_closes_at": at(50)}, "sale_closes_at"),
    ({"sale_opens_at": at(100), "sale_closes_at": at(200)}, None),
    ({"sale_opens_at": "2030-01-01T10:00:00"}, "sale_opens_at"),      # no time zone: ambiguous
    ({"sale_closes_at": "tomorrow"}, "sale_closes_at"),
    ({"queue": {"enabled": True, "prequeue_s": -1}}, "prequeue_s"),
])
async def test_times_in_the_wrong_order_are_refused(client, database_url, pg, fields, where):
    _, key = await new_org(database_url)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json={**seat_spec(), **fields}, headers=auth(key))
    if where is None:
        assert resp.status_code == 201
        return
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and where in err["message"]
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_schedule_changes_are_checked(client, database_url):
    _, key = await new_org(database_url)
    event = await _create(client, key, sale_opens_at=at(100))
    eid = event["id"]
    wrong = await client.put(f"/v1/events/{eid}/schedule",
                             json={"sale_opens_at": at(100), "sale_closes_at": at(10)}, headers=auth(key))
    assert wrong.status_code == 422 and "sale_closes_at" in wrong.json()["error"]["message"]
    assert (await client.get(f"/v1/events/{eid}", headers=auth(key))).json()["schedule"] == event["schedule"]
    await client.post(f"/v1/events/{eid}/open", headers=auth(key))  # opened by hand before its time
    moved = await client.put(f"/v1/events/{eid}/schedule", json={"sale_opens_at": at(200)}, headers=auth(key))
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "invalid_state"
    closes = at(3600)
    ok = await client.put(f"/v1/events/{eid}/schedule",
                          json={"sale_opens_at": event["schedule"]["sale_opens_at"], "sale_closes_at": closes},
                          headers=auth(key))
    assert ok.status_code == 200, ok.text
    public = (await client.get(f"/v1/events/{eid}/public")).json()
    assert datetime.fromisoformat(public["sale_closes_at"]) == datetime.fromisoformat(closes)
    _, other = await new_org(database_url)
    assert (await client.put(f"/v1/events/{eid}/schedule", json={}, headers=auth(other))).status_code == 404
    await client.post(f"/v1/events/{eid}/close", headers=auth(key))
    closed = await client.put(f"/v1/events/{eid}/schedule", json={}, headers=auth(key))
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "invalid_state"


async def test_unscheduled_drafts_stay_private(client, database_url):
    _, key = await new_org(database_url)
    event = await _create(client, key)
    assert (await client.get(f"/v1/events/{event['id']}/public")).status_code == 404
    scheduled = await client.put(f"/v1/events/{event['id']}/schedule", json={"sale_opens_at": at(3600)},
                                 headers=auth(key))
    assert scheduled.status_code == 200
    # a worker that answered 404 a moment ago finds it public within its few-second memory of misses
    async def public() -> bool:
        return (await client.get(f"/v1/events/{event['id']}/public")).status_code == 200
    await _until(public, timeout=8)
