"""Payment-provider simulator throughput: requests per second and latency, 1 worker vs N workers.

Each request is `POST /v1/payments/authorize` with a fresh Idempotency-Key (so every request
creates a payment and stores an answer), zero configured latency, driven by wrk on the same
machine (keep-alive connections). Configurations:

- 1 worker, state in memory (the fallback without Redis);
- 1 worker, state in Redis;
- N workers, state in Redis (the test session's and `flashgate up`'s set-up).

Redis: REDIS_URL, or a private redis-server. Every configuration is checked afterwards: no
non-2xx answer, and as many payments authorized as wrk counted requests (at least).

Run: .venv/bin/python bench/bench_simulator.py [--duration 5] [--workers 4] [--connections 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx

from _stack import wrk

from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import RedisServer, stop_process

WRK_SCRIPT = r"""
local counter = 0
local threads = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount_minor":4200,"currency":"EUR","reference":"bench"}'
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "bench-" .. tid .. "-" .. counter
  return wrk.format(nil, "/v1/payments/authorize")
end
"""


def run_one(script: Path, *, workers: int, redis_url: str | None, duration: int, connections: int) -> dict:
    proc, url = start_simulator_process(workers=workers, redis_url=redis_url)
    try:
        result = wrk(url, script, duration=duration, connections=connections)
        stats = httpx.get(url + "/_stats", timeout=10).json()
    finally:
        stop_process(proc)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result["raw"])
    done = re.search(r"(\d+) requests in", result["raw"])
    if non_2xx or not done or stats.get("authorized", 0) < int(done.group(1)):
        raise SystemExit(f"bench: the simulator did not answer every call right: {stats}\n{result['raw']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flashgate-bench-sim-"))
    tmp.chmod(0o755)
    server = None
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            server = RedisServer(tmp / "redis").start()
            redis_url = server.url
        script = tmp / "authorize.lua"
        script.write_text(WRK_SCRIPT)
        setups = [("1 worker, memory", 1, None), ("1 worker, Redis", 1, redis_url),
                  (f"{args.workers} workers, Redis", args.workers, redis_url)]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in setups}
        for _ in range(args.repeat):  # alternate the set-ups, so a busy moment does not hit one only
            for name, workers, url in setups:
                runs[name].append(run_one(script, workers=workers, redis_url=url, duration=args.duration,
                                          connections=args.connections))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrk -t2 -c{args.connections} -d{args.duration}s, POST /v1/payments/authorize, a new key per request")
    print(f"{'set-up':<22}{'req/s (median)':>16}{'p50 ms':>9}{'p99 ms':>9}   runs (req/s)")
    for name, results in runs.items():
        best = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
        print(f"{name:<22}{best['rps']:>16,.0f}{best.get('p50_ms', 0):>9.2f}{best.get('p99_ms', 0):>9.2f}   "
              + " · ".join(f"{r['rps']:,.0f}" for r in results))


if __name__ == "__main__":
    main()
