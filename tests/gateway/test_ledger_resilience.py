"""Nothing accepted is lost (invariant 4): Postgres down during a burst of sales, and a
ledger worker killed mid-work. Sales go on; afterwards the ledger catches up and
`flashgate audit` passes with nothing lost and nothing doubled."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest

from gateway.api.app import create_app
from gateway.core.config import Settings
from gateway.db.migrate import migrate
from gateway.stack.embedded import MissingBinary, PostgresServer
from gateway.store.keys import LEDGER_GROUP, event_key
from gateway.workers.ledger import write_batch
from tests.conftest import need
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import stack_env, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def sell(client, event_id: int, n: int, offset: int = 0) -> list[dict]:
    """n buyers at once, at most 32 in checkout together (the payment bulkhead sheds more, by design)."""
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> dict:
        async with gate:
            return await _one(i)

    async def _one(i: int) -> dict:
        tok = (await client.post("/v1/buyer-token")).json()["buyer_token"]
        h = (await client.post(f"/v1/events/{event_id}/holds", json={"ga": {"floor": 1}}, headers=auth(tok))).json()
        resp = await client.post(f"/v1/holds/{h['hold_id']}/checkout", json={},
                                 headers={**auth(tok), "Idempotency-Key": f"burst-{offset + i:06d}"})
        assert resp.status_code == 201, resp.text
        return resp.json()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def audit(settings: Settings, event_id: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", str(event_id)], env=stack_env(settings),
                          capture_output=True, text=True, timeout=60)


async def wait_audit(settings: Settings, event_id: int, timeout: float = 40.0) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(audit, settings, event_id)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


@pytest.fixture
def own_postgres(tmp_root):
    """A private Postgres this test may stop and start (never the shared one)."""
    try:
        server = PostgresServer(tmp_root / f"pg-outage-{secrets.token_hex(3)}", fast_unsafe=True).start()
    except MissingBinary as exc:
        need(str(exc))
    yield server
    server.stop()


async def test_sales_survive_a_postgres_outage(own_postgres, settings, payment_simulator, tmp_root):
    db_url = own_postgres.url("postgres")
    await migrate(db_url)
    local = settings.model_copy(update={"database_url": db_url, "redis_prefix": settings.redis_prefix + ":pgout"})
    app = create_app(local)
    async with app.fastapi.router.lifespan_context(app.fastapi):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            _, key = await new_org(db_url)
            event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 1000}), headers=auth(key))).json()
            assert (await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))).status_code == 200
            with start_worker(local, "ledger", tmp_root):
                await sell(client, event["id"], 10)
                await asyncio.to_thread(own_postgres.stop)
                orders = await sell(client, event["id"], 60, offset=100)  # Postgres is down: sales go on
                assert len({o["order_id"] for o in orders}) == 60
                assert (await client.get(f"/v1/events/{event['id']}/availability")).status_code == 200
                await asyncio.sleep(1.0)
                await asyncio.to_thread(own_postgres.start)
                result = await wait_audit(local, event["id"])
            assert result.returncode == 0, result.stdout + result.stderr
            conn = await asyncpg.connect(db_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", event["id"]) == 70
                assert await conn.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", event["id"]) == 70
                assert await conn.fetchval("SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id "
                                           "WHERE o.event_id = $1", event["id"]) == 70
            finally:
                await conn.close()


async def test_a_killed_ledger_worker_loses_and_doubles_nothing(app, client, database_url, settings, tmp_root,
                                                               monkeypatch):
    monkeypatch.setenv("FLASHGATE_LEDGER_CLAIM_IDLE_MS", "500")
    _, key = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 2000}), headers=auth(key))).json()
    await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
    runtime = app.gateway.runtime
    stream = event_key(settings.redis_prefix, event["id"], "ledger")
    with start_worker(settings, "ledger", tmp_root) as first:
        await sell(client, event["id"], 150)
        os.kill(first.pid, signal.SIGKILL)  # dies wherever it is: maybe mid-batch
        first.wait(10)
    await sell(client, event["id"], 50, offset=1000)
    # A worker that wrote a batch and died before XACK: its entries stay pending, already in Postgres.
    entries = await runtime.redis.xreadgroup(LEDGER_GROUP, "crashed-worker", {stream: ">"}, count=20)
    if entries and entries[0][1]:
        await write_batch(await runtime.pg(), event["id"], entries[0][1])
    await asyncio.sleep(0.6)
    with start_worker(settings, "ledger", tmp_root):
        result = await wait_audit(settings, event["id"])
    assert result.returncode == 0, result.stdout + result.stderr
    pool = await runtime.pg()
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", event["id"]) == 200
    assert await pool.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", event["id"]) == 200
    info = {g["name"]: g for g in await runtime.redis.xinfo_groups(stream)}
    group = info.get(LEDGER_GROUP.encode()) or info.get(LEDGER_GROUP)
    assert group["pending"] == 0


async def test_a_malformed_entry_is_dead_lettered_and_blocks_nothing(app, client, database_url, settings):
    from gateway.workers.ledger import LedgerWorker

    _, key = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 50}), headers=auth(key))).json()
    await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
    runtime = app.gateway.runtime
    stream = event_key(settings.redis_prefix, event["id"], "ledger")
    await runtime.redis.xadd(stream, {"k": "order", "d": b'{"order_id": "not-a-uuid"}', "o": b"{}"})
    orders = await sell(client, event["id"], 3)
    worker = LedgerWorker(runtime, consumer="dead-letter-test")
    while await worker.step():
        pass
    dead = await runtime.redis.xrange(event_key(settings.redis_prefix, event["id"], "ledger:dead"))
    assert len(dead) == 1 and b"not-a-uuid" in dead[0][1][b"d"]
    pool = await runtime.pg()
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", event["id"]) == len(orders)
