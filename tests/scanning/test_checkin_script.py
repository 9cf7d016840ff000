"""lua/scan_checkin.lua on its own, on a single Redis and on a real Redis Cluster (every key of the
door in the event's slot), including a random mix of online and offline scans of one ticket."""

from __future__ import annotations

import random
import secrets

import orjson
import pytest

from gateway.store.keys import event_key, scan_key, scan_keys
from tests.lua.conftest import event_id, local_cluster, scripts  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio
PREFIX = f"tscan-{secrets.token_hex(4)}"  # own keys: runs against a shared Redis never meet
ORDER = "6f1d3c2e-0000-4000-8000-000000000001"


async def setup_order(scripts, event_id, *, voided: bool = False) -> None:  # noqa: F811
    order = {"order_id": ORDER, "serial_start": 10, "count": 3, **({"voided_at_ms": 1} if voided else {})}
    await scripts.redis.hset(event_key(PREFIX, event_id, "orders"), ORDER, orjson.dumps(order))


async def checkin(scripts, event_id, *, device="dev-a", sid, gate="north", serial=10, order=ORDER,  # noqa: F811
                  verdict="ticket", rule="ga:floor", direction="in", mode="online", at="", local=None):
    args = [device, sid, f"uuid-{device}-{sid}", gate, verdict, serial, order, rule, direction, mode, at, "",
            "tid", orjson.dumps({"local_result": local}).decode()]
    return await scripts.call("scan_checkin", scan_keys(PREFIX, event_id), args)


async def stats(scripts, event_id) -> dict[str, int]:  # noqa: F811
    raw = await scripts.redis.hgetall(scan_key(PREFIX, event_id, "stats"))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_decisions(scripts, event_id):  # noqa: F811
    await setup_order(scripts, event_id)
    first = await checkin(scripts, event_id, sid="1")
    assert first.ok and first.data["r"] == "admitted" and first.data["i"] == 1 and first.data["sn"] == 10
    dup = await checkin(scripts, event_id, sid="2", device="dev-b", gate="south")
    assert dup.data["r"] == "duplicate" and dup.data["f"]["g"] == "north" and dup.data["f"]["sid"] == "1"
    replay = await checkin(scripts, event_id, sid="1", serial=11)
    assert replay.data["replay"] is True and replay.data["r"] == "admitted" and replay.data["sn"] == 10
    out = await checkin(scripts, event_id, sid="3", direction="out")
    assert out.data["r"] == "exited"
    assert (await checkin(scripts, event_id, sid="4", direction="out")).data["r"] == "not_inside"
    assert (await checkin(scripts, event_id, sid="5")).data["r"] == "duplicate"  # no re-entry rule
    await scripts.redis.hset(scan_key(PREFIX, event_id, "rules"), "ga:floor", "1")
    again = await checkin(scripts, event_id, sid="6", gate="south")
    assert again.data["r"] == "admitted" and again.data["n"] == 2 and again.data["re"] is True
    assert (await checkin(scripts, event_id, sid="7", serial=13)).data["rs"] == "not_issued"
    assert (await checkin(scripts, event_id, sid="8", order="nope")).data["rs"] == "not_issued"
    assert (await checkin(scripts, event_id, sid="9", verdict="wrong_event", serial="", order="")).data["r"] == \
        "wrong_event"
    await scripts.redis.sadd(scan_key(PREFIX, event_id, "revoked"), "dev-b")
    assert (await checkin(scripts, event_id, sid="10", device="dev-b")).status == "device_revoked"
    s = await stats(scripts, event_id)
    assert s["north|admitted"] == 1 and s["south|admitted"] == 1 and s["south|reentered"] == 1
    assert s["inside"] == 1 and s["north|exited"] == 1 and s["north|not_inside"] == 1
    entries = await scripts.redis.xrange(event_key(PREFIX, event_id, "ledger"))
    assert len(entries) == 9  # every decided scan once; the replay and the revoked device add nothing
    results = [orjson.loads(e[1][b"d"])["result"] for e in entries]
    assert results.count("admitted") == 1 and results.count("reentered") == 1


async def test_void(scripts, event_id):  # noqa: F811
    await setup_order(scripts, event_id, voided=True)
    answer = await checkin(scripts, event_id, sid="1")
    assert answer.data["r"] == "void" and answer.data["va"] == 1


async def test_earliest_offline_scan_takes_over(scripts, event_id):  # noqa: F811
    await setup_order(scripts, event_id)
    online = await checkin(scripts, event_id, sid="on")
    at = online.data["at"]
    late = await checkin(scripts, event_id, sid="off-late", device="dev-b", mode="offline", at=at + 5000,
                         local="admitted")
    assert late.data["r"] == "duplicate" and late.data["c"] is True
    early = await checkin(scripts, event_id, sid="off-early", device="dev-c", gate="east", mode="offline",
                          at=at - 5000, local="admitted")
    assert early.data["r"] == "admitted" and early.data["c"] is True
    s = await stats(scripts, event_id)
    assert s["north|admitted"] == 0 and s["north|duplicate"] == 2 and s["east|admitted"] == 1  # late one too
    last = orjson.loads((await scripts.redis.xrevrange(event_key(PREFIX, event_id, "ledger"), count=1))[0][1][b"d"])
    assert last["demote"] == "uuid-dev-a-on" and last["result"] == "admitted"


async def test_random_online_and_offline_scans_admit_once(scripts, event_id):  # noqa: F811
    await setup_order(scripts, event_id)
    rng = random.Random(event_id)
    base = 1_750_000_000_000
    admitted = demoted = 0
    times = []
    for i in range(60):
        offline = rng.random() < 0.5
        at = base + rng.randrange(0, 100_000)
        reply = await checkin(scripts, event_id, sid=str(i), device=f"dev-{rng.randrange(4)}",
                              gate=f"g{rng.randrange(3)}", mode="offline" if offline else "online",
                              at=at if offline else "", local="admitted")
        if offline:
            times.append(at)
        admitted += reply.data["r"] == "admitted"
        demoted += bool(reply.data["r"] == "admitted" and reply.data.get("c"))
    s = await stats(scripts, event_id)
    assert sum(v for k, v in s.items() if k.endswith("|admitted")) == 1
    assert admitted - demoted == 1
    record = orjson.loads(await scripts.redis.hget(scan_key(PREFIX, event_id, "checkin"), 10))
    assert record["a"] <= min(times)  # the earliest offline scan, or an online one before it
