"""Degraded mode: Redis paused or stopped under a gateway with its own private redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.stack.embedded import RedisServer
from tests.scanning.conftest import buy, device, scan
from tests.utils.factories import auth, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
async def door_app(settings, private_redis, tmp_path, sim) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    from gateway.api.app import create_app

    s = settings.model_copy(update={"redis_url": private_redis.url, "redis_prefix": "deg", "data_dir": tmp_path})
    edge = create_app(s)
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield edge, c


async def event_with_devices(client: httpx.AsyncClient, database_url: str) -> dict[str, Any]:
    _, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(sections=1, rows=1, seats=10, ga={"floor": 10}))
    ev["api_key"] = key
    ev["tickets"] = (await buy(client, ev["id"], {"seats": ["A-1-1", "A-1-2", "A-1-3"]}))["tickets"]
    ev["north"], ev["south"] = await device(client, ev, "north"), await device(client, ev, "south")
    return ev


async def until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_paused_redis_scans_go_on_degraded_and_replay(door_app, database_url, private_redis):
    app, client = door_app
    ev = await event_with_devices(client, database_url)
    t1, t2, t3 = (t["code"] for t in ev["tickets"])
    assert (await scan(client, ev["north"], t1))["degraded"] is False
    control = redis.Redis.from_url(private_redis.url)
    try:
        control.execute_command("CLIENT", "PAUSE", 2500, "ALL")
        started = time.monotonic()
        a = await scan(client, ev["north"], t2, scan_id="deg-1")
        assert time.monotonic() - started < 2.0  # the Redis budget (1 s), then degraded at once
        assert a["result"] == "admitted" and a["degraded"] is True and a["ticket"]["seat"] == "A-1-2"
        b = await scan(client, ev["south"], t2, scan_id="deg-2")
        assert b["result"] == "duplicate" and b["degraded"] is True and b["first_scan"]["gate"] == "north"
        c = await scan(client, ev["south"], t1)  # admitted online before the pause: known locally
        assert c["result"] == "duplicate" and c["degraded"] is True
        d = await scan(client, ev["south"], "garbage")
        assert d["result"] == "invalid" and d["degraded"] is True
        # Batches and the manifest need Redis: 503 with Retry-After, fast.
        resp = await client.get("/v1/scan/manifest", headers=auth(ev["north"]["token"]))
        assert resp.status_code == 503 and resp.headers["retry-after"]
    finally:
        control.close()

    async def replayed() -> bool:
        stats = await client.get(f"/v1/events/{ev['id']}/scans", headers=auth(ev["api_key"]))
        return stats.status_code == 200 and stats.json()["admitted"] == 2 and not app.gateway.scanning.local.queue

    await until(replayed)
    stats = (await client.get(f"/v1/events/{ev['id']}/scans", headers=auth(ev["api_key"]))).json()
    assert stats["duplicates"] == 2 and stats["invalid"] == 1
    online = await scan(client, ev["north"], t2)
    assert online["result"] == "duplicate" and online["degraded"] is False and online["first_scan"]["scan_id"] == "deg-1"
    replay = await scan(client, ev["north"], t2, scan_id="deg-1")
    assert replay["replay"] is True and replay["result"] == "admitted"
    assert (await scan(client, ev["north"], t3))["result"] == "admitted"


async def test_stopped_redis_then_back(door_app, database_url, private_redis):
    app, client = door_app
    ev = await event_with_devices(client, database_url)
    t1, t2, _ = (t["code"] for t in ev["tickets"])
    assert (await scan(client, ev["north"], t1))["result"] == "admitted"
    # A device revoked before the outage stays refused in degraded mode.
    revoked = await device(client, ev, "west")
    assert (await client.delete(f"/v1/events/{ev['id']}/devices/{revoked['device_id']}",
                                headers=auth(ev["api_key"]))).status_code == 200
    await asyncio.sleep(1.5)  # the worker's copy of the revoked set is refreshed every second
    private_redis.stop()
    try:
        started = time.monotonic()
        a = await scan(client, ev["south"], t2)
        assert a["result"] == "admitted" and a["degraded"] is True and time.monotonic() - started < 1.5
        assert (await scan(client, ev["north"], t2))["result"] == "duplicate"
        resp = await client.post("/v1/scan", json={"code": t2}, headers=auth(revoked["token"]))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "device_revoked"
        # A device of an event this worker never scanned for cannot be served without Redis.
        stranger = app.gateway.scanning.devices.signer.sign("d", {"ev": ev["id"] + 1000, "dev": "x", "g": "g"})
        resp = await client.post("/v1/scan", json={"code": t2}, headers=auth(stranger))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        journal = list((app.gateway.settings.data_dir / "scan-journal").glob("worker-*.jsonl"))
        assert journal and journal[0].read_bytes().count(b"\n") == 2
    finally:
        private_redis.start()  # same port, same append-only file

    async def replayed() -> bool:
        return not app.gateway.scanning.local.queue

    await until(replayed)
    again = await scan(client, ev["north"], t2)
    assert again["result"] == "duplicate" and again["degraded"] is False and again["first_scan"]["gate"] == "south"
    stats = (await client.get(f"/v1/events/{ev['id']}/scans", headers=auth(ev["api_key"]))).json()
    assert stats["admitted"] == 2 and stats["duplicates"] == 2
    journal = list((app.gateway.settings.data_dir / "scan-journal").glob("worker-*.jsonl"))
    assert all(p.stat().st_size == 0 for p in journal)
