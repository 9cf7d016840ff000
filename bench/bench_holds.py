"""The ceiling and the gateway: seat holds per second.

1. Ceiling: the project's own `hold` Lua script called directly on Redis with a
   pipelined client (asyncio, batches of 256, 4 in flight).
2. Gateway: `POST /v1/events/{id}/holds` through granian (2 workers) driven by wrk
   on the same machine, each request a random seat and one of 5,000 buyers.
Prints both, their ratio, and the target (gateway >= 25 % of the ceiling).

Run: .venv/bin/python bench/bench_holds.py [--duration 10] [--connections 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import statistics
import tempfile
import time
from pathlib import Path

import hiredis
import httpx
import redis as redis_sync
import redis.asyncio as aioredis

from _stack import bench_stack, gateway, new_org_key, wrk

from gateway.store.keys import event_keys
from gateway.store.scripts import Scripts, load_source
from gateway.core.tokens import TokenSigner

SECTIONS, ROWS, SEATS = 100, 50, 40  # 200,000 seats


def spec(name: str) -> dict:
    return {"name": name, "currency": "EUR", "per_buyer_limit": 1000, "hold_ttl_s": 3600,
            "price_tiers": {"std": 5000},
            "sections": [{"name": f"S{s}", "rows": [{"label": str(r + 1), "seats": SEATS, "price_tier": "std"}
                                                    for r in range(ROWS)]} for s in range(SECTIONS)]}


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


async def ceiling(settings, event_id: int, seconds: float, lanes: int = 4, batch: int = 256) -> float:
    """Holds per second of the hold script itself: raw RESP over pipelined sockets, so the
    client costs little next to Redis (redis-py's pipeline packing would be the limit)."""
    client = aioredis.Redis.from_url(settings.redis_url)
    await Scripts(client).load_all()
    sha = Scripts(client)["hold"].sha.encode()
    await client.aclose()
    keys = [k.encode() for k in event_keys(settings.redis_prefix, event_id)]
    head = [b"EVALSHA", sha, b"%d" % len(keys), *keys]
    n_seats = SECTIONS * ROWS * SEATS
    host, port = settings.redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    done = 0
    stop = time.perf_counter() + seconds

    async def lane(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        parser = hiredis.Reader()
        while time.perf_counter() < stop:
            writer.write(b"".join(_resp(*head, os.urandom(8).hex().encode(), b"b%d" % rng.randrange(5000), b"1",
                                        b"%d" % rng.randrange(n_seats)) for _ in range(batch)))
            got = 0
            while got < batch:
                parser.feed(await reader.read(1 << 16))
                while parser.gets() is not False:
                    got += 1
            done += batch
        writer.close()
        await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(lanes)))
    return done / (time.perf_counter() - start)


def ceiling_redis_benchmark(settings, event_id: int, requests: int = 200_000) -> float | None:
    """The same ceiling measured with redis-benchmark (C client, pipelined): the client costs
    almost nothing, so this is Redis running the hold script. None when not installed."""
    binary = shutil.which("redis-benchmark")
    if not binary:
        return None
    client = redis_sync.Redis.from_url(settings.redis_url)
    sha = client.script_load(load_source("hold"))
    client.close()
    host, port = settings.redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    keys = event_keys(settings.redis_prefix, event_id)
    # Each __rand_int__ is an independent random number below -r (zero-padded): seat index,
    # buyer, and a hold id made of two of them.
    args = [binary, "-h", host, "-p", port, "-n", str(requests), "-c", "8", "-P", "32", "-r",
            str(SECTIONS * ROWS * SEATS), "-q", "EVALSHA", sha, str(len(keys)), *keys, "h__rand_int____rand_int__",
            "b__rand_int__", "1", "__rand_int__"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    match = re.search(r"([\d.]+) requests per second", out)
    return float(match.group(1)) if match else None


WRK_SCRIPT = r"""
local tokens = {%(tokens)s}
local counts = {}
local threads = {}
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function request()
  local s = math.random(0, %(sections)d - 1)
  local r = math.random(1, %(rows)d)
  local n = math.random(1, %(seats)d)
  wrk.headers["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)]
  return wrk.format(nil, "/v1/events/%(event)d/holds", nil,
                    '{"seats":["S' .. s .. '-' .. r .. '-' .. n .. '"]}')
end
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with bench_stack() as settings:
        key = asyncio.run(new_org_key(settings))
        signer = TokenSigner(settings.secret_bytes)
        tokens = ",".join(f'"{signer.sign("b", {"sub": f"wrk{i}", "exp": int(time.time()) + 3600})}"'
                          for i in range(5000))
        ceil, ceil_c, runs = [], [], []
        with gateway(settings) as url:
            h = {"Authorization": f"Bearer {key}"}

            def fresh(name: str) -> int:
                resp = httpx.post(url + "/v1/events", json=spec(name), headers=h, timeout=120)
                assert resp.status_code == 201, resp.text
                event = resp.json()
                httpx.post(url + f"/v1/events/{event['id']}/open", headers=h, timeout=60).raise_for_status()
                return event["id"]

            # Each run starts from an empty venue (a filling venue answers more cheap refusals);
            # all venues are created before any load.
            venues = [(fresh(f"ceiling-{i}"), fresh(f"ceiling-c-{i}"), fresh(f"gateway-{i}"))
                      for i in range(args.repeat)]
            for i, (ev_ceiling, ev_c, ev_gateway) in enumerate(venues):
                ceil.append(asyncio.run(ceiling(settings, ev_ceiling, args.duration)))
                c = ceiling_redis_benchmark(settings, ev_c, requests=int(args.duration * 25_000))
                if c:
                    ceil_c.append(c)
                script = Path(tempfile.mkdtemp()) / "holds.lua"
                script.write_text(WRK_SCRIPT % {"tokens": tokens, "sections": SECTIONS, "rows": ROWS,
                                                "seats": SEATS, "event": ev_gateway})
                runs.append(wrk(url, script, duration=args.duration, connections=args.connections))
    ceiling_med = statistics.median(ceil)
    gw_med = statistics.median(r["rps"] for r in runs)
    print(f"{'measure':<44}{'median':>12}  runs")
    print(f"{'ceiling: hold script, pipelined (holds/s)':<44}{ceiling_med:>12,.0f}  "
          + ", ".join(f"{c:,.0f}" for c in ceil))
    print(f"{'gateway: POST /holds via wrk (requests/s)':<44}{gw_med:>12,.0f}  "
          + ", ".join(f"{r['rps']:,.0f}" for r in runs))
    print(f"{'gateway p50 / p99 latency (ms)':<44}{statistics.median(r.get('p50_ms', 0) for r in runs):>12.2f}"
          f"  p99 {statistics.median(r.get('p99_ms', 0) for r in runs):.2f}")
    if ceil_c:
        print(f"{'ceiling: hold script via redis-benchmark':<44}{statistics.median(ceil_c):>12,.0f}  "
              + ", ".join(f"{c:,.0f}" for c in ceil_c))
    ratio = gw_med / ceiling_med
    print(f"{'ratio gateway / ceiling (Python client)':<44}{ratio:>12.1%}  target >= 25% "
          f"{'MET' if ratio >= 0.25 else 'NOT MET'}")
    if ceil_c:
        ratio_c = gw_med / statistics.median(ceil_c)
        print(f"{'ratio gateway / ceiling (redis-benchmark)':<44}{ratio_c:>12.1%}  target >= 25% "
              f"{'MET' if ratio_c >= 0.25 else 'NOT MET'}")


if __name__ == "__main__":
    main()
