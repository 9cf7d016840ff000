"""`DATABASE_REPLICA_URL`: organiser lists and reports read from a real streaming replica.

A private primary and a `pg_basebackup -R` replica of it are started from the Postgres binaries; the
schema is migrated on the primary and reaches the replica by replication. Sales go through the app and
the ledger worker writes them to the primary. With the replica's replay paused, the organiser's orders
list still shows what the replica has (proof that it reads there) and reports a growing lag; past the
maximum lag, with the replica stopped or promoted, and for a query the standby cancels, the primary answers
instead; with the primary stopped, the replica still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.db.migrate import migrate
from gateway.stack.embedded import MissingBinary
from gateway.stack.pgreplica import ReplicaPair
from gateway.workers.ledger import LedgerWorker
from tests.conftest import need
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec
from tests.utils.pgreplica import replayed_all
from tests.utils.servers import delete_prefix, run_async

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pair(tmp_root: Path) -> Iterator[ReplicaPair]:
    root = Path(tempfile.mkdtemp(prefix="pg-replica-", dir=tmp_root))
    root.chmod(0o755)
    try:
        servers = ReplicaPair.start(root)
    except MissingBinary as exc:
        need(str(exc))
    yield servers
    servers.stop()


@pytest.fixture
def replica_settings(pair: ReplicaPair, settings: Settings, redis_server_url: str) -> Iterator[Settings]:
    # Its own Redis prefix: event ids restart at 1 in this database and must not meet the session's events.
    prefix = settings.redis_prefix + "rep"
    run_async(migrate, pair.primary.url())
    yield settings.model_copy(update={
        "database_url": pair.primary.url(), "database_replica_url": pair.replica.url(),
        "redis_prefix": prefix, "database_replica_check_s": 0.1, "database_replica_max_lag_s": 60.0})
    delete_prefix(redis_server_url, prefix)


@contextlib.asynccontextmanager
async def gateway(settings: Settings, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An in-process gateway app (like one worker) and a client talking to it over ASGI (from loopback)."""
    from gateway.api.app import create_app

    edge = create_app(settings.model_copy(update=overrides))
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client, edge.gateway


async def sell(client: httpx.AsyncClient, event_id: int, seat: str) -> str:
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{event_id}/holds", json={"seats": [seat]}, headers=me)
    assert hold.status_code == 201, hold.text
    paid = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={"email": "fan@example.org"},
                             headers={**me, "Idempotency-Key": f"replica-{event_id}-{seat}"})
    assert paid.status_code == 201, paid.text
    return paid.json()["order_id"]


async def write_ledger(gw: Any) -> None:
    worker = LedgerWorker(gw.runtime, consumer="replica-test")
    while await worker.step():
        pass


async def orders(client: httpx.AsyncClient, event_id: int, key: str) -> tuple[set[str], dict[str, Any]]:
    resp = await client.get(f"/v1/events/{event_id}/orders", headers=auth(key))
    assert resp.status_code == 200, resp.text
    return {o["order_id"] for o in resp.json()["orders"]}, resp.json()["read_from"]


def sample(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def test_a_query_the_replica_cancels_runs_again_on_the_primary(pair, replica_settings):
    """A hot standby cancels a query that holds back replay ("conflict with recovery"): the read is answered by
    the primary, and the replica stays in use for the next ones."""
    primary = await asyncpg.connect(pair.primary.url())
    replica = await asyncpg.connect(pair.replica.url())
    runtime = Runtime.from_settings(replica_settings)
    try:
        await replica.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
        await replica.execute("SELECT pg_reload_conf()")
        await primary.execute("DROP TABLE IF EXISTS conflict_probe; CREATE TABLE conflict_probe (i int); "
                              "INSERT INTO conflict_probe VALUES (1)")
        await replayed_all(pair.primary.url(), pair.replica.url())

        async def read(pool: asyncpg.Pool) -> bool:
            # Long on the replica only: time for the primary to take a lock that replay must apply.
            return await pool.fetchval("SELECT pg_is_in_recovery() FROM conflict_probe, "
                                       "pg_sleep(CASE WHEN pg_is_in_recovery() THEN 5 ELSE 0 END)")

        running = asyncio.ensure_future(runtime.reads.run(read))
        await asyncio.sleep(0.5)
        async with primary.transaction():
            await primary.execute("LOCK TABLE conflict_probe IN ACCESS EXCLUSIVE MODE")
        on_replica, state = await asyncio.wait_for(running, 10)
        assert on_replica is False, "answered by the replica"
        assert state is not None and not state.usable and "conflict with recovery" in state.reason
        # The replica stays in use for the next reads.
        assert (await runtime.reads.run(lambda pool: pool.fetchval("SELECT pg_is_in_recovery()")))[0] is True
    finally:
        await runtime.close()
        await replica.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
        await replica.execute("SELECT pg_reload_conf()")
        await primary.close()
        await replica.close()


async def test_organiser_reads_go_to_the_replica_and_fall_back_to_the_primary(pair, replica_settings):
    primary = await asyncpg.connect(pair.primary.url())
    replica = await asyncpg.connect(pair.replica.url())
    try:
        async with gateway(replica_settings) as (client, gw):
            _, key = await new_org(pair.primary.url())
            eid = (await open_event(client, key, seat_spec(sections=1, rows=1, seats=10)))["id"]
            first = await sell(client, eid, "A-1-1")
            await write_ledger(gw)
            await replayed_all(pair.primary.url(), pair.replica.url())
            seen, where = await orders(client, eid, key)
            assert seen == {first}
            assert where["source"] == "replica" and where["replica_up"] is True, where

            # Replay paused: what the ledger writes now is on the primary only.
            await replica.execute("SELECT pg_wal_replay_pause()")
            later = {await sell(client, eid, "A-1-2"), await sell(client, eid, "A-1-3")}
            await write_ledger(gw)
            assert await primary.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", eid) == 3
            await asyncio.sleep(0.5)
            seen, where = await orders(client, eid, key)
            assert seen == {first}, "the orders list did not read from the replica"
            assert where["source"] == "replica" and where["lag_s"] >= 0.5 and where["lag_bytes"] > 0, where

            # An event created meanwhile is not on the replica yet: its owner is found on the primary.
            draft = await client.post("/v1/events", json=seat_spec(sections=1, rows=1, seats=2), headers=auth(key))
            assert draft.status_code == 201, draft.text
            fresh = await client.get(f"/v1/events/{draft.json()['id']}/orders", headers=auth(key))
            assert fresh.status_code == 200 and fresh.json()["orders"] == [], fresh.text
            assert await replica.fetchval("SELECT count(*) FROM events WHERE id = $1", draft.json()["id"]) == 0

            scrape = (await client.get("/metrics")).text
            assert sample(scrape, "flashgate_pg_replica_up") == 1.0
            assert sample(scrape, "flashgate_pg_replica_in_use") == 1.0
            assert (sample(scrape, "flashgate_pg_replica_lag_seconds") or 0) >= 0.5
            assert (sample(scrape, "flashgate_pg_replica_lag_bytes") or 0) > 0
            ready = (await client.get("/readyz")).json()
            assert ready["checks"]["postgres_replica"]["ok"] is True
            assert ready["checks"]["postgres_replica"]["lag_s"] >= 0.5

            # The audit compares Postgres with Redis now: a replica that is behind does not answer it.
            audit = (await client.get(f"/v1/events/{eid}/audit", headers=auth(key))).json()
            assert audit["verdict"] == "pass" and audit["postgres"] == "primary", audit

            # More behind than the maximum lag: the primary answers, and says why.
            async with gateway(replica_settings, database_replica_max_lag_s=0.2) as (strict, _):
                seen, where = await orders(strict, eid, key)
                assert seen == {first} | later
                assert where["source"] == "primary" and "lag" in where["reason"], where

            # Replay resumed: the replica catches up, the lag goes back to zero, the audit reads there.
            await replica.execute("SELECT pg_wal_replay_resume()")
            deadline = time.monotonic() + 10
            while True:
                seen, where = await orders(client, eid, key)
                if seen == {first} | later and where["lag_s"] == 0:
                    break
                assert time.monotonic() < deadline, (seen, where)
                await asyncio.sleep(0.1)
            assert where["source"] == "replica" and where["lag_bytes"] == 0, where
            audit = (await client.get(f"/v1/events/{eid}/audit", headers=auth(key))).json()
            assert audit["verdict"] == "pass" and audit["postgres"] == "replica", audit
            scrape = (await client.get("/metrics")).text
            assert sample(scrape, "flashgate_pg_replica_lag_seconds") == 0.0
            assert (sample(scrape, 'flashgate_pg_reads_total{target="replica"}') or 0) >= 3

            # The primary down: sales go on (not shown here), and the replica still answers the orders list.
            await primary.close()
            pair.primary.stop()
            await asyncio.sleep(0.2)  # past the check interval: the next read checks again
            seen, where = await orders(client, eid, key)
            assert seen == {first} | later and where["source"] == "replica", where
            door = await client.get(f"/v1/events/{eid}/scans", headers=auth(key))
            assert door.status_code == 200 and door.json()["admitted"] == 0, door.text
            ready = (await client.get("/readyz")).json()
            assert ready["degraded"] == ["postgres"] and ready["checks"]["postgres_replica"]["ok"], ready
            pair.primary.start()

        # The replica stops between two checks: the read fails there and runs again on the primary.
        async with gateway(replica_settings, database_replica_check_s=3600.0) as (client, gw):
            seen, where = await orders(client, eid, key)
            assert where["source"] == "replica"
            await replica.close()
            pair.replica.stop()
            seen, where = await orders(client, eid, key)
            assert seen == {first} | later
            assert where["source"] == "primary" and where["replica_up"] is False, where
            ready = await client.get("/readyz")
            assert ready.status_code == 200  # sales do not need the replica
            assert "postgres_replica" in ready.json()["degraded"], ready.json()
            scrape = (await client.get("/metrics")).text
            assert sample(scrape, "flashgate_pg_replica_up") == 0.0
            assert sample(scrape, "flashgate_pg_replica_in_use") == 0.0
            assert (sample(scrape, 'flashgate_pg_reads_total{target="primary_fallback"}') or 0) >= 1

            # Back, but promoted (a failover left it a primary of its own): no longer a replica to read from.
            pair.replica.start()
            promoted = await asyncpg.connect(pair.replica.url())
            try:
                assert await promoted.fetchval("SELECT pg_promote(wait => true)")
            finally:
                await promoted.close()
            state = await gw.runtime.reads.state(fresh=True)
            assert state.up and not state.usable and "not a standby" in state.reason, state
            seen, where = await orders(client, eid, key)
            assert where["source"] == "primary" and where["replica_up"] is True, where
    finally:
        if not primary.is_closed():
            await primary.close()
        if not replica.is_closed():
            await replica.close()
