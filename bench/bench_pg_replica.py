"""Read-replica lag under a burst of ledger writes (docs/scaling.md, "Postgres").

Starts a private Postgres primary and a streaming replica of it (gateway/stack/pgreplica.py; fsync on,
as in production, unless --fast), fills an event's ledger stream with N confirmed orders (2 GA tickets
each) and drains it into the primary with two ledger consumers, as fast as they go. Meanwhile the
replica's lag is measured every 20 ms the way the gateway does (`ReplicaReads.measure`): seconds
behind and WAL bytes not replayed. Reports the write rate, the lag during the burst (median, p99,
max), and how long after the last commit the replica had replayed everything.

Run: .venv/bin/python bench/bench_pg_replica.py [--orders 20000] [--repeat 3] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _stack import ledger_burst_event  # also puts the project on sys.path

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.db.migrate import migrate
from gateway.db.replica import ReplicaReads, lsn
from gateway.organisers.orgs import create_organisation
from gateway.stack.embedded import RedisServer
from gateway.stack.pgreplica import ReplicaPair
from gateway.workers.ledger import LedgerWorker

TICKETS_PER_ORDER = 2
WORKERS = 2
SAMPLE_S = 0.02


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


async def burst(runtime: Runtime, reads: ReplicaReads, org_id: int, orders: int, r: int) -> dict[str, float]:
    pool = await runtime.pg()
    event = await ledger_burst_event(runtime, org_id, f"replica-{r}", orders, TICKETS_PER_ORDER)
    prefix = runtime.prefix
    await runtime.redis.delete(f"{prefix}:events:ledger")
    await runtime.redis.sadd(f"{prefix}:events:ledger", event["id"])
    workers = [LedgerWorker(runtime, consumer=f"bench-{r}-{w}") for w in range(WORKERS)]
    lags: list[float] = []
    behind: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            state = await reads.measure()
            if state.lag_s is not None:
                lags.append(state.lag_s)
            if state.lag_bytes is not None:
                behind.append(state.lag_bytes)
            await asyncio.sleep(SAMPLE_S)

    async def drain(worker: LedgerWorker) -> None:
        while await worker.step():
            pass

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    await asyncio.gather(*(drain(w) for w in workers))
    elapsed = time.perf_counter() - start
    done.set()
    await sampler
    # After the last commit: how long until the replica has replayed all of it.
    target = lsn(await pool.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
    replica = await reads.replica_pool()
    t0 = time.perf_counter()
    while (lsn(await replica.fetchval("SELECT pg_last_wal_replay_lsn()::text")) or 0) < (target or 0):
        await asyncio.sleep(0.002)
    catch_up = time.perf_counter() - t0
    on_replica = await replica.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", event["id"])
    assert on_replica == orders * TICKETS_PER_ORDER, on_replica
    return {"tickets_s": orders * TICKETS_PER_ORDER / elapsed, "burst_s": elapsed,
            "lag_p50": statistics.median(lags) if lags else 0.0, "lag_p99": pct(lags, 0.99),
            "lag_max": max(lags, default=0.0), "bytes_max": float(max(behind, default=0)),
            "catch_up_ms": catch_up * 1000, "samples": float(len(lags))}


async def run(settings: Settings, orders: int, repeat: int) -> list[dict[str, float]]:
    runtime = Runtime.from_settings(settings)
    reads = ReplicaReads(settings, runtime.pg)
    org = await create_organisation(await runtime.pg(), name="Bench")
    try:
        return [await burst(runtime, reads, org.id, orders, r) for r in range(repeat)]
    finally:
        await reads.close()
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fast", action="store_true", help="fsync off on both servers (throwaway data)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flashgate-bench-replica-"))
    tmp.chmod(0o755)
    servers: list = []
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            servers.append(RedisServer(tmp / "redis").start())
            redis_url = servers[-1].url
        pair = ReplicaPair.start(tmp, fast_unsafe=args.fast)
        servers.append(pair)
        asyncio.run(migrate(pair.primary.url()))
        settings = Settings(environment="test", redis_url=redis_url, database_url=pair.primary.url(),
                            database_replica_url=pair.replica.url(), redis_prefix=f"bench{secrets.token_hex(3)}",
                            data_dir=tmp / "data", secret_key="bench-" + secrets.token_hex(24))
        results = asyncio.run(run(settings, args.orders, args.repeat))
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def row(label: str, key: str, fmt: str) -> None:
        values = [r[key] for r in results]
        print(f"{label:<52}{format(statistics.median(values), fmt):>12}  " + ", ".join(format(v, fmt) for v in values))

    print(f"{args.orders:,} orders ({TICKETS_PER_ORDER} tickets + 1 payment each) per burst, {WORKERS} ledger "
          f"consumers, fsync {'off' if args.fast else 'on'}; lag sampled every {SAMPLE_S * 1000:.0f} ms")
    print(f"{'measure':<52}{'median':>12}  runs")
    row("primary: tickets written per second", "tickets_s", ",.0f")
    row("burst duration, s", "burst_s", ".2f")
    row("replica lag during the burst, median, s", "lag_p50", ".3f")
    row("replica lag during the burst, p99, s", "lag_p99", ".3f")
    row("replica lag during the burst, max, s", "lag_max", ".3f")
    row("WAL not yet replayed, max, bytes", "bytes_max", ",.0f")
    row("replica caught up after the last commit, ms", "catch_up_ms", ".1f")


if __name__ == "__main__":
    main()
