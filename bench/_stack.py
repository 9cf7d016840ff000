"""Shared set-up for benchmarks: servers (private unless REDIS_URL / DATABASE_URL are set),
a fresh database, an organisation, a gateway process and wrk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.core.config import Settings  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.organisers.orgs import create_organisation  # noqa: E402
from gateway.stack.embedded import (PostgresServer, RedisServer, free_port, spawn, stop_process,  # noqa: E402
                                    wait_ready)


@contextlib.contextmanager
def bench_stack() -> Iterator[Settings]:
    tmp = Path(tempfile.mkdtemp(prefix="flashgate-bench-"))
    tmp.chmod(0o755)
    servers = []
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            servers.append(RedisServer(tmp / "redis").start())
            redis_url = servers[-1].url
        pg_url = os.environ.get("DATABASE_URL")
        if pg_url:
            admin = pg_url.rsplit("/", 1)[0] + "/postgres"
        else:
            servers.append(PostgresServer(tmp / "pg", fast_unsafe=True).start())
            admin = servers[-1].url()
        name = f"flashgate_bench_{secrets.token_hex(4)}"

        async def create() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()

        asyncio.run(create())
        db_url = admin.rsplit("/", 1)[0] + "/" + name
        asyncio.run(migrate(db_url))
        settings = Settings(environment="test", redis_url=redis_url, database_url=db_url,
                            redis_prefix=f"bench{secrets.token_hex(3)}", data_dir=tmp / "data",
                            secret_key="bench-" + secrets.token_hex(24))
        yield settings

        async def drop() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()

        asyncio.run(drop())
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": settings.redis_url or "", "DATABASE_URL": settings.database_url or "",
            "FLASHGATE_REDIS_PREFIX": settings.redis_prefix, "FLASHGATE_SECRET_KEY": settings.secret_key or "",
            "FLASHGATE_ENVIRONMENT": settings.environment, "FLASHGATE_DATA_DIR": str(settings.data_dir)}


@contextlib.contextmanager
def gateway(settings: Settings, workers: int = 2) -> Iterator[str]:
    port = free_port()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
                 log=settings.data_dir / "gateway.log", env=env_for(settings), cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 30, proc=proc, log=settings.data_dir / "gateway.log")
        yield url
    finally:
        stop_process(proc)


async def new_org_key(settings: Settings) -> str:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return (await create_organisation(conn, name="Bench")).api_key
    finally:
        await conn.close()


def wrk(url: str, script: Path, *, duration: int = 10, connections: int = 128, threads: int = 2) -> dict:
    binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("bench: `wrk` not found; install it with `sudo apt-get install wrk` (Debian/Ubuntu) "
                         "or `brew install wrk` (macOS)")
    out = subprocess.run([binary, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout + out.stderr
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    result = {"rps": rps, "raw": text}
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", text)
        if match:
            value, unit = float(match.group(1)), match.group(2)
            result[f"p{pct}_ms"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    statuses = re.search(r"STATUS (.*)", text)
    if statuses:
        result["statuses"] = dict(part.split("=") for part in statuses.group(1).split())
    return result


async def ledger_burst_event(runtime, org_id: int, name: str, orders: int, tickets_per_order: int) -> dict:
    """An open GA event whose ledger stream already holds `orders` confirmed orders (as checkout writes
    them), for the ledger worker to drain: the shared set-up of the ledger and replica benchmarks."""
    import orjson

    from gateway.organisers import events
    from gateway.organisers.event_spec import EventSpec
    from gateway.store.keys import event_key

    pool = await runtime.pg()
    spec = EventSpec.model_validate({"name": name, "currency": "EUR",
                                     "ga": [{"code": "ga", "name": "GA", "capacity": 10_000_000,
                                             "price_minor": 1000}]})
    event = await events.create_event(pool, organisation_id=org_id, spec=spec)
    await events.EventAdmin(runtime).change_status(org_id, event["id"], "open")
    stream = event_key(runtime.prefix, event["id"], "ledger")
    now = int(time.time() * 1000)
    pipe = runtime.redis.pipeline(transaction=False)
    for i in range(orders):
        d = {"order_id": str(uuid.uuid4()), "hold_id": f"{event['id']}-{i:x}", "buyer": f"b{i}", "seats": [],
             "ga": {"ga": tickets_per_order}, "count": tickets_per_order,
             "serial_start": 1 + i * tickets_per_order, "confirmed_at_ms": now, "version": i + 1}
        o = {"payment_id": f"pay_{i}", "provider": "simulator", "amount_minor": 2000, "currency": "EUR",
             "email": None, "idempotency_key": f"k{i}"}
        pipe.xadd(stream, {"k": "order", "d": orjson.dumps(d), "o": orjson.dumps(o)})
        if len(pipe) >= 2000:
            await pipe.execute()
    await pipe.execute()
    return event
