"""`flashgate up` survives the death of its children (docs/operations.md, "Runbook: processes,
Postgres and the payment provider"): the ledger worker, the private Postgres and the private Redis
are SIGKILLed while the platform sells; the gateway keeps answering, the supervisor logs each death
and starts the child again, the sales made meanwhile reach Postgres, and the audit is clean."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.stack.supervisor import RESTART_FIRST_S, RESTART_MAX_S, RESTART_STABLE_S, Restarts, describe_exit
from tests.chaos.stack_faults import alive, buy, platform, wait_audit_clean
from tests.utils.factories import auth, seat_spec

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def read_stack(path: Path) -> dict:
    return json.loads(path.read_text())


async def wait_restarted(stack_file: Path, name: str, old_pid: int, timeout: float = 60.0) -> int:
    """The pid stack.json names for `name` once it differs from `old_pid` and runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_stack(stack_file)
        pid = {**info["children"], **info.get("servers", {})}.get(name)
        if pid and pid != old_pid and alive(pid):
            return pid
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} was not started again")


def test_restart_backoff_doubles_is_capped_and_resets_after_a_stable_run():
    r = Restarts(started=0.0)
    delays = []
    for _ in range(9):  # a child that dies 1 s after each start
        now = r.started + 1.0
        delays.append(r.delay(now))
        r.started = now + delays[-1]
    assert delays == [RESTART_FIRST_S * 2 ** i for i in range(6)] + [RESTART_MAX_S] * 3  # 0.5 s ... 16 s, 30 s
    # One that then stayed up long enough starts again from the first delay.
    assert r.delay(r.started + RESTART_STABLE_S + 1) == RESTART_FIRST_S
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL" and describe_exit(3) == "exit code 3"


async def test_up_restarts_a_killed_ledger_worker_postgres_and_redis(tmp_root):
    with platform(tmp_root / "up-chaos") as up:
        info, out, key, stack_file = up.info, up.out, up.api_key, up.stack_file
        async with httpx.AsyncClient(base_url=info["gateway_url"], timeout=20) as client:
            event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 100}), headers=auth(key))).json()
            assert (await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))).status_code == 200
            sold = [await buy(client, event["id"], f"sup-first-{i}") for i in range(3)]

            # The ledger worker dies: the platform does not stop, buyers keep buying.
            ledger_pid = info["children"]["worker-ledger"]
            os.kill(ledger_pid, signal.SIGKILL)
            sold += [await buy(client, event["id"], f"sup-dead-ledger-{i}") for i in range(5)]
            assert (await client.get("/readyz")).status_code == 200
            line = out.wait_for("worker-ledger exited (signal SIGKILL)")
            assert "restarting in 0.5 s" in line, line
            out.wait_for("worker-ledger restarted")
            await wait_restarted(stack_file, "worker-ledger", ledger_pid)

            # The private Postgres crashes: started again on its data and port; sales never waited for it.
            pg_pid = read_stack(stack_file)["servers"]["postgres"]
            os.kill(pg_pid, signal.SIGKILL)
            sold += [await buy(client, event["id"], f"sup-dead-pg-{i}") for i in range(5)]
            out.wait_for("postgres exited (signal SIGKILL)")
            out.wait_for("postgres restarted", timeout=120)
            await wait_restarted(stack_file, "postgres", pg_pid)
            assert (await client.get("/readyz")).status_code == 200
            assert up.proc.poll() is None, "the platform stopped"

            # The private Redis crashes once its append-only file has the sales (fsync every second):
            # started again from it; buyers retry on 503 while it is away.
            await asyncio.sleep(1.5)
            redis_pid = read_stack(stack_file)["servers"]["redis"]
            os.kill(redis_pid, signal.SIGKILL)
            out.wait_for("redis exited (signal SIGKILL)")
            out.wait_for("redis restarted")
            await wait_restarted(stack_file, "redis", redis_pid)
            sold += [await buy(client, event["id"], f"sup-after-redis-{i}") for i in range(3)]
            deadline = time.monotonic() + 30
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not get ready again"
                await asyncio.sleep(0.2)

            assert [b["status"] for b in sold] == [201] * 16, sold
            result = await wait_audit_clean(up.env, event["id"], timeout=90)
            assert result.returncode == 0, result.stdout + result.stderr
            conn = await asyncpg.connect(info["database_url"])
            try:
                orders = await conn.fetch("SELECT id::text FROM orders WHERE event_id = $1", event["id"])
            finally:
                await conn.close()
            assert sorted(r["id"] for r in orders) == sorted(b["body"]["order_id"] for b in sold)
        restarts = read_stack(stack_file)["restarts"]
        assert restarts == {"worker-ledger": 1, "postgres": 1, "redis": 1}, restarts
