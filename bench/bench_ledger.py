"""Ledger throughput: Redis ledger stream -> Postgres, batched, as the ledger worker does it.

Fills an event's ledger stream with N confirmed orders (2 GA tickets each, as `confirm`
writes them), then drains it with one LedgerWorker and reports tickets per second.
Target: >= 20,000 tickets/s on this machine.

Run: .venv/bin/python bench/bench_ledger.py [--orders 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _stack import bench_stack, ledger_burst_event

from gateway.core.runtime import Runtime
from gateway.organisers.orgs import create_organisation
from gateway.workers.ledger import LedgerWorker

TICKETS_PER_ORDER = 2
WORKERS = 2  # consumers of the same group, as two ledger worker processes would be


async def run(settings, orders: int, repeat: int) -> list[tuple[float, float]]:
    runtime = Runtime.from_settings(settings)
    pool = await runtime.pg()
    org = await create_organisation(pool, name="Bench")
    results = []
    for r in range(repeat):
        event = await ledger_burst_event(runtime, org.id, f"ledger-{r}", orders, TICKETS_PER_ORDER)
        workers = [LedgerWorker(runtime, consumer=f"bench-{r}-{w}") for w in range(WORKERS)]
        # Only this event: leave other benchmark events' streams out of the timing.
        await runtime.redis.delete(f"{settings.redis_prefix}:events:ledger")
        await runtime.redis.sadd(f"{settings.redis_prefix}:events:ledger", event["id"])
        start = time.perf_counter()

        async def drain(worker: LedgerWorker) -> None:
            while await worker.step():
                pass

        await asyncio.gather(*(drain(w) for w in workers))
        elapsed = time.perf_counter() - start
        written = await pool.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", event["id"])
        assert written == orders * TICKETS_PER_ORDER, written
        results.append((orders * TICKETS_PER_ORDER / elapsed, orders / elapsed))
    await runtime.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with bench_stack() as settings:
        results = asyncio.run(run(settings, args.orders, args.repeat))
    tickets = [t for t, _ in results]
    print(f"{'measure':<46}{'median':>12}  runs")
    print(f"{'ledger: tickets written per second':<46}{statistics.median(tickets):>12,.0f}  "
          + ", ".join(f"{t:,.0f}" for t in tickets))
    print(f"{'ledger: orders written per second':<46}{statistics.median(o for _, o in results):>12,.0f}  "
          f"({TICKETS_PER_ORDER} tickets and 1 payment each, batches of 1,000 entries, {WORKERS} consumers)")
    med = statistics.median(tickets)
    print(f"{'target >= 20,000 tickets/s':<46}{'MET' if med >= 20_000 else 'NOT MET':>12}")


if __name__ == "__main__":
    main()
