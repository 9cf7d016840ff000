"""A gateway worker and the ledger worker SIGKILLed in the middle of many checkouts (docs/operations.md,
"Runbook: processes, Postgres and the payment provider"; the recovery path: docs/checkout.md).

A `flashgate up` of its own with 2 gateway workers; the payment simulator is slowed so that checkouts
are in flight when the kills land. Buyers retry with the same Idempotency-Key after a connection error
or a 503, as the buyer page does. Afterwards: every buyer who got a 201 has exactly one order and
nobody else has one, no hold is paid twice, every captured payment belongs to an order or was
refunded, and the audit is clean once the restarted ledger worker has drained the stream."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import httpx
import pytest

from tests.chaos.stack_faults import alive, buy, children_of, platform, wait_audit_clean
from tests.utils.factories import auth, seat_spec

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BUYERS = 60


async def test_gateway_and_ledger_workers_killed_mid_checkout(tmp_root):
    # Buyers come from addresses of their own (X-Forwarded-For from a trusted proxy), as in a real sale.
    with platform(tmp_root / "kill-mid-checkout", workers=2, trusted_proxies="127.0.0.1/32") as up:
        info = up.info
        gateway_pid = info["children"]["gateway"]
        limits = httpx.Limits(max_connections=BUYERS, max_keepalive_connections=BUYERS)
        async with httpx.AsyncClient(base_url=info["gateway_url"], timeout=20, limits=limits) as client, \
                httpx.AsyncClient(base_url=info["payments_url"], timeout=5) as sim:
            event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 500}),
                                       headers=auth(up.api_key))).json()
            assert (await client.post(f"/v1/events/{event['id']}/open", headers=auth(up.api_key))).status_code == 200
            # Slow payments: a checkout takes a few hundred ms, so the kills land in the middle of many.
            assert (await sim.put("/_config", json={"latency_ms": 300})).status_code == 200
            workers_before = children_of(gateway_pid)
            assert len(workers_before) >= 2, workers_before

            buyers = [asyncio.create_task(buy(client, event["id"], f"kill-{i:04d}", tries=40,
                                                 address=f"10.0.{i // 250}.{i % 250 + 1}"))
                      for i in range(BUYERS)]
            deadline = time.monotonic() + 60
            while (await sim.get("/_stats")).json().get("authorize", 0) < 5:  # the first payments are on their way
                assert time.monotonic() < deadline, "no checkout reached the provider"
                await asyncio.sleep(0.05)
            victim = workers_before[0]
            os.kill(victim, signal.SIGKILL)
            os.kill(info["children"]["worker-ledger"], signal.SIGKILL)
            results = await asyncio.gather(*buyers)
            await sim.put("/_config", json={"latency_ms": 0})

            # granian replaced its worker; the supervisor restarted the ledger worker; the platform runs on.
            deadline = time.monotonic() + 30
            while not (len([p for p in children_of(gateway_pid) if alive(p)]) >= 2 and not alive(victim)):
                assert time.monotonic() < deadline, "the gateway worker was not replaced"
                await asyncio.sleep(0.2)
            up.out.wait_for("worker-ledger exited (signal SIGKILL)")
            up.out.wait_for("worker-ledger restarted")
            assert (await client.get("/readyz")).status_code == 200
            gateway_log = (up.stack_file.parent / "log" / "gateway.log").read_text(errors="replace")
            assert "Respawning worker" in gateway_log, gateway_log[-2000:]

            statuses = [r["status"] for r in results]
            # The kills cost some buyers a retry, never their purchase.
            assert statuses == [201] * BUYERS, [r for r in results if r["status"] != 201]
            paid = {r["body"]["order_id"]: r for r in results}
            # The kill did cut checkouts short: their buyers had to send them again with the same key.
            assert any(r["attempts"] > 1 for r in results), "no checkout was interrupted"
            assert len(paid) == BUYERS

            result = await wait_audit_clean(up.env, event["id"], timeout=90)
            assert result.returncode == 0, result.stdout + result.stderr
            conn = await asyncpg.connect(info["database_url"])
            try:
                rows = await conn.fetch("SELECT id::text AS id, hold_id, buyer, status FROM orders "
                                        "WHERE event_id = $1", event["id"])
                tickets = await conn.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", event["id"])
                captures = await conn.fetch("SELECT p.order_id::text AS order_id, p.provider_ref FROM payments p "
                                            "JOIN orders o ON o.id = p.order_id "
                                            "WHERE o.event_id = $1 AND p.kind = 'capture'", event["id"])
                orphan_refunds = await conn.fetchval("SELECT count(*) FROM payments WHERE order_id IS NULL "
                                                     "AND kind = 'refund' AND hold_id LIKE $1", f"{event['id']}-%")
            finally:
                await conn.close()
            assert sorted(r["id"] for r in rows) == sorted(paid)  # each 201 has its order, nothing else does
            assert len({r["hold_id"] for r in rows}) == len(rows)  # no hold paid twice
            assert all(r["status"] == "paid" for r in rows) and tickets == BUYERS
            for r in rows:
                assert paid[r["id"]]["hold_id"] == r["hold_id"]
            # The money: one capture per order, and every payment the provider took belongs to an
            # order or was refunded (an orphan refund: checkout's recovery path).
            assert sorted(c["order_id"] for c in captures) == sorted(paid)
            assert len({c["provider_ref"] for c in captures}) == BUYERS
            stats = (await sim.get("/_stats")).json()
            assert stats["captured"] == BUYERS + orphan_refunds, (stats, orphan_refunds)  # one-step charges
            tickets_by_order = [len(r["body"]["tickets"]) for r in results]
            assert tickets_by_order == [1] * BUYERS
