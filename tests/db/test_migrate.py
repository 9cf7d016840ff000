"""Migrations: from empty, re-run, concurrent runs; the schema's own guards."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import uuid

import asyncpg
import pytest

from gateway.db.migrate import discover, migrate
from tests.utils.live import stack_env
from tests.utils.servers import drop_database, run_async



@pytest.fixture
def empty_db(postgres_server_url):
    name = f"flashgate_mig_{secrets.token_hex(4)}"

    async def create():
        conn = await asyncpg.connect(postgres_server_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    run_async(create)
    yield postgres_server_url.rsplit("/", 1)[0] + "/" + name
    run_async(drop_database, postgres_server_url, name)


@pytest.mark.anyio
async def test_from_empty_then_rerun(empty_db):
    applied = await migrate(empty_db)
    assert [m.version for m in applied] == [m.version for m in discover()]
    assert await migrate(empty_db) == []
    conn = await asyncpg.connect(empty_db)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    finally:
        await conn.close()
    assert versions == [m.version for m in discover()]
    assert {"organisations", "api_keys", "events", "sections", "seat_rows", "seats", "ticket_types", "price_tiers",
            "orders", "tickets", "payments", "scans", "devices", "ledger_entries"} <= tables


def test_two_processes_at_once(empty_db, settings):
    env = {**stack_env(settings), "DATABASE_URL": empty_db}
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.cli", "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    counts = sorted(int(o[0].split()[1]) for o in outs)
    assert counts == [0, len(discover())], outs  # one applied everything, the other nothing

    async def check():
        conn = await asyncpg.connect(empty_db)
        try:
            return await conn.fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            await conn.close()

    assert run_async(check) == len(discover())


async def _order(conn, event_id):
    order_id = uuid.uuid4()
    await conn.execute("""INSERT INTO orders (id, event_id, hold_id, buyer, status, total_minor, currency)
                          VALUES ($1, $2, $3, 'b', 'paid', 100, 'EUR')""", order_id, event_id, str(order_id))
    return order_id


async def _event(conn):
    org = await conn.fetchval("INSERT INTO organisations (name) VALUES ('x') RETURNING id")
    return await conn.fetchval("""INSERT INTO events (organisation_id, name, currency, hold_ttl_s, per_buyer_limit)
                                  VALUES ($1, 'e', 'EUR', 600, 8) RETURNING id""", org)


@pytest.mark.anyio
async def test_postgres_refuses_a_second_live_ticket_for_a_seat(pg):
    event_id = await _event(pg)
    insert = """INSERT INTO tickets (id, order_id, event_id, serial, seat_index, status)
                VALUES ($1, $2, $3, $4, 7, $5)"""
    await pg.execute(insert, uuid.uuid4(), await _order(pg, event_id), event_id, 1, "valid")
    with pytest.raises(asyncpg.UniqueViolationError, match="uq_tickets_live_seat"):
        await pg.execute(insert, uuid.uuid4(), await _order(pg, event_id), event_id, 2, "valid")
    # A voided ticket does not block the seat's next sale.
    await pg.execute("UPDATE tickets SET status = 'void' WHERE event_id = $1", event_id)
    await pg.execute(insert, uuid.uuid4(), await _order(pg, event_id), event_id, 3, "valid")


@pytest.mark.anyio
async def test_postgres_refuses_a_second_admitted_scan(pg):
    event_id = await _event(pg)
    order_id = await _order(pg, event_id)
    ticket = uuid.uuid4()
    await pg.execute("""INSERT INTO tickets (id, order_id, event_id, serial, ticket_type)
                        VALUES ($1, $2, $3, 1, 'floor')""", ticket, order_id, event_id)
    device = uuid.uuid4()
    await pg.execute("INSERT INTO devices (id, event_id, gate, token_hash) VALUES ($1, $2, 'north', $3)",
                     device, event_id, secrets.token_bytes(32))
    scan = """INSERT INTO scans (id, event_id, ticket_id, device_id, device_scan_id, gate, result, scanned_at)
              VALUES ($1, $2, $3, $4, $5, 'north', $6, now())"""
    await pg.execute(scan, uuid.uuid4(), event_id, ticket, device, "s1", "admitted")
    await pg.execute(scan, uuid.uuid4(), event_id, ticket, device, "s2", "duplicate")
    with pytest.raises(asyncpg.UniqueViolationError, match="uq_scans_admitted_ticket"):
        await pg.execute(scan, uuid.uuid4(), event_id, ticket, device, "s3", "admitted")
