"""Offline uploads: earliest scan wins, conflicts flagged, idempotent per (device, scan id)."""

from __future__ import annotations

import time

import pytest

from tests.scanning.conftest import drain_ledger, scan
from tests.utils.factories import auth

pytestmark = pytest.mark.anyio


def ms(seconds_ago: float) -> int:
    return int((time.time() - seconds_ago) * 1000)


async def upload(client, dev, scans, **extra):
    resp = await client.post("/v1/scan/batch", json={"scans": scans, **extra}, headers=auth(dev["token"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_two_offline_devices_same_ticket_one_admitted(client, door, app, pg):
    code = door["tickets"][0]["code"]
    # South scanned later but syncs first; north scanned earlier and syncs second: north wins.
    south = await upload(client, door["south"], [{"scan_id": "s-1", "code": code, "scanned_at": ms(30),
                                                  "local_result": "admitted"}])
    assert south["results"][0]["result"] == "admitted" and south["degraded"] is False
    north = await upload(client, door["north"], [{"scan_id": "n-1", "code": code, "scanned_at": ms(60),
                                                  "local_result": "admitted"}])
    won = north["results"][0]
    assert won["result"] == "admitted" and won["conflict"] is True and won["scanned_at_ms"] < \
        south["results"][0]["scanned_at_ms"]
    # Re-uploading south's scan answers its first answer; a new look at the ticket says north first.
    again = await upload(client, door["south"], [{"scan_id": "s-1", "code": code, "scanned_at": ms(30)}])
    assert again["results"][0]["replay"] is True
    online = await scan(client, door["south"], code)
    assert online["result"] == "duplicate" and online["first_scan"]["gate"] == "north"
    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    assert stats["admitted"] == 1 and stats["duplicates"] == 2 and stats["conflicts"] == 1
    assert stats["gates"]["north"]["admitted"] == 1 and stats["gates"]["south"]["admitted"] == 0
    await drain_ledger(app)
    rows = await pg.fetch("SELECT device_scan_id, result, conflict, mode FROM scans WHERE event_id = $1 "
                          "AND ticket_id = $2::uuid ORDER BY scanned_at", door["id"], door["tickets"][0]["ticket_id"])
    assert [(r["device_scan_id"], r["result"]) for r in rows][:2] == [("n-1", "admitted"), ("s-1", "duplicate")]
    assert sum(r["result"] == "admitted" for r in rows) == 1 and rows[1]["conflict"] is True


async def test_offline_scan_after_an_online_admission_loses_by_time(client, door):
    code = door["tickets"][1]["code"]
    online = await scan(client, door["north"], code)
    late = await upload(client, door["south"], [{"scan_id": "late-1", "code": code, "scanned_at": ms(-1),
                                                 "local_result": "admitted"}])
    answer = late["results"][0]
    assert answer["result"] == "duplicate" and answer["conflict"] is True
    assert answer["first_scan"]["scan_id"] == online["scan_id"]


async def test_batch_is_idempotent_and_keeps_request_order(client, door):
    t = door["tickets"]
    scans = [{"scan_id": f"b-{i}", "code": t[i % 3]["code"], "scanned_at": ms(100 - i)} for i in range(6)]
    scans.append({"scan_id": "b-bad", "code": "not a code", "scanned_at": ms(1)})
    first = await upload(client, door["north"], scans, sent_at=ms(0), queue_length=7)
    results = [r["result"] for r in first["results"]]
    assert results == ["admitted"] * 3 + ["duplicate"] * 3 + ["invalid"]
    assert [r["scan_id"] for r in first["results"]] == [s["scan_id"] for s in scans]
    stats_before = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    second = await upload(client, door["north"], scans, sent_at=ms(0), queue_length=0)
    assert [r["result"] for r in second["results"]] == results and all(r["replay"] for r in second["results"])
    stats_after = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    for name in ("admitted", "duplicates", "invalid", "conflicts"):
        assert stats_before[name] == stats_after[name]
    devices = stats_after["gates"]["north"]["devices"]
    assert [d["queue_length"] for d in devices if d["device_id"] == door["north"]["device_id"]] == [0]


async def test_sent_at_corrects_a_device_clock(client, door):
    code = door["tickets"][2]["code"]
    skew = 3600_000  # the device's clock is an hour fast
    answer = (await upload(client, door["north"], [{"scan_id": "c-1", "code": code, "scanned_at": ms(-3600) - 5000}],
                           sent_at=ms(-3600)))["results"][0]
    assert answer["result"] == "admitted"
    assert abs(answer["scanned_at_ms"] - (ms(0) - 5000)) < 2000, (answer["scanned_at_ms"], skew)


async def test_batch_same_ticket_twice_in_one_upload(client, door):
    code = door["tickets"][3]["code"]
    out = await upload(client, door["north"], [
        {"scan_id": "x-2", "code": code, "scanned_at": ms(10), "local_result": "duplicate"},
        {"scan_id": "x-1", "code": code, "scanned_at": ms(20), "local_result": "admitted"}])
    assert [r["result"] for r in out["results"]] == ["duplicate", "admitted"]
    assert out["results"][0]["first_scan"]["scan_id"] == "x-1" and out["results"][0]["conflict"] is False
