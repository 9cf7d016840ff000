"""Holds per second on one Redis vs one Redis Cluster shard, through the application's own script
runner (`Scripts` on the hot-path wire: `WireConnection` on a single Redis, `ClusterWire` on a Cluster).

Starts a private single Redis and a private 3-master Redis Cluster (from the binaries on PATH) and,
for each run, prepares fresh events of 1,000,000 seats and drives the `hold` script (one random seat,
one of 5,000 buyers) with `--inflight` calls always in flight from one process for `--duration`
seconds, `--repeat` times (a fresh venue per run keeps nearly every call a real hold: the share that
found its seat taken is printed too):

1. single Redis, one event;
2. Cluster, one event: every call goes to the one master that owns the event's slot (the hot-shard
   limit: one event never spreads over shards);
3. Cluster, three events on three different masters: what the tier gives when sales spread.

Prints the median holds/s of each and the ratios (docs/scaling.md records them). On a small machine
the three masters and the client share the same cores, so (3) shows routing cost more than scale.

Run: .venv/bin/python bench/bench_cluster.py [--duration 5] [--repeat 3] [--inflight 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from _stack import ROOT  # noqa: F401  (puts the project on sys.path)

from redis.crc import key_slot

from gateway.sale import inventory
from gateway.stack.embedded import RedisServer
from gateway.store.cluster import ClusterWire
from gateway.store.keys import event_key, event_keys
from gateway.store.redis import redis_client
from gateway.store.scripts import Scripts
from gateway.store.wire import WireConnection
from tests.utils.cluster import LocalCluster

N_SEATS = 1_000_000
PREFIX = "bench"


async def _scripts(url: str) -> Scripts:
    client = redis_client(url, timeout_s=5.0)
    wire = ClusterWire(url, timeout_s=5.0) if url.startswith("redis+cluster") else WireConnection(url, timeout_s=5.0)
    scripts = Scripts(client, wire=wire)
    await scripts.load_all()
    return scripts


async def _close(scripts: Scripts) -> None:
    await (scripts.cluster or scripts.wire).close()  # type: ignore[union-attr]
    await scripts.redis.aclose()


async def _prepare(scripts: Scripts, event_id: int) -> None:
    await inventory.prepare_event(scripts=scripts, prefix=PREFIX, event_id=event_id, status="on_sale", n_seats=N_SEATS,
                                  hold_ttl_s=3600, per_buyer_limit=1_000_000, checkout_s=60, ga={})


async def _drive(scripts: Scripts, events: list[int], seconds: float, inflight: int) -> tuple[float, float]:
    """(hold calls per second, share of them that held their seat)."""
    done = held = 0
    stop = time.perf_counter() + seconds

    async def lane(seed: int) -> None:
        nonlocal done, held
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            event_id = events[rng.randrange(len(events))]
            reply = await scripts.call("hold", event_keys(PREFIX, event_id),
                                       [os.urandom(8).hex(), f"b{rng.randrange(5000)}", 1, rng.randrange(N_SEATS)])
            done += 1
            held += reply.ok

    start = time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(inflight)))
    return done / (time.perf_counter() - start), held / max(1, done)


_next_id = [1000]


def _spread_events(shards: dict[int, tuple[int, list[int]]] | None, n: int) -> list[int]:
    """`n` fresh event ids; on a Cluster (`shards`: slot -> master) on `n` different masters."""
    found: dict[int, int] = {}
    while len(found) < n:
        _next_id[0] += 1
        event_id = _next_id[0]
        master = shards[key_slot(event_key(PREFIX, event_id, "meta").encode())][0] if shards else event_id
        found.setdefault(master, event_id)
    return list(found.values())


async def measure(url: str, shards, n_events: int, args: argparse.Namespace) -> list[tuple[float, float]]:
    scripts = await _scripts(url)
    runs = []
    try:
        for i in range(args.repeat + 1):  # the first run warms up: connections, slot map, script cache
            events = _spread_events(shards, n_events)
            for event_id in events:
                await _prepare(scripts, event_id)
            result = await _drive(scripts, events, 1.0 if i == 0 else args.duration, args.inflight)
            if i:
                runs.append(result)
        return runs
    finally:
        await _close(scripts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=256)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flashgate-bench-cluster-"))
    single = RedisServer(tmp / "single").start()
    cluster = LocalCluster(tmp / "cluster", masters=3).start()
    try:
        shards = cluster.shards()
        runs = {
            "single Redis, one event": asyncio.run(measure(single.url, None, 1, args)),
            "Cluster, one event (one shard)": asyncio.run(measure(cluster.url, shards, 1, args)),
            "Cluster, three events on three shards": asyncio.run(measure(cluster.url, shards, 3, args)),
        }
    finally:
        cluster.stop()
        single.stop()
    medians = {name: statistics.median(rate for rate, _ in values) for name, values in runs.items()}
    base = medians["single Redis, one event"]
    print(f"hold script through Scripts + wire, {args.inflight} calls in flight, {args.duration:g} s x {args.repeat}, "
          f"{os.cpu_count()} CPUs")
    for name, values in runs.items():
        shown = ", ".join(f"{rate:,.0f}" for rate, _ in values)
        held = min(share for _, share in values)
        print(f"  {name:40s} median {medians[name]:>9,.0f} holds/s  (runs: {shown}; held >= {held:.0%})"
              f"  ratio to single {medians[name] / base:.2f}")


if __name__ == "__main__":
    main()
