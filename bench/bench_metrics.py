"""What the metrics cost on the hot path.

1. Per request, in-process: the instrumentation one availability request pays (its latency histogram,
   the in-process counter, batched until the worker's flush) in prometheus-client's multiprocess mode,
   as `flashgate serve` runs it (memory-mapped files), in µs; and what the same two observations cost
   written straight to prometheus-client, for comparison.
2. The gateway: `GET /v1/events/{id}/availability?seats=0` through granian (2 workers) driven by wrk,
   with metrics on and with `FLASHGATE_METRICS_ENABLED=0`, alternating, `--repeat` runs each; prints
   every run, the medians and their ratio, in requests/s and in the gateway processes' CPU time per
   request (from /proc: steadier than requests/s when other work shares the machine).
3. `/metrics` scrapes after the load: the first one's time and size, and the median of the next 5.

Run: .venv/bin/python bench/bench_metrics.py [--duration 10] [--connections 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _stack import ROOT, bench_stack, gateway, new_org_key, wrk

SPEC = {"name": "Metrics bench", "currency": "EUR", "per_buyer_limit": 8, "hold_ttl_s": 600,
        "price_tiers": {"std": 5000},
        "sections": [{"name": f"S{s}", "rows": [{"label": str(r + 1), "seats": 40, "price_tier": "std"}
                                                for r in range(20)]} for s in range(10)]}

MICRO = r"""
import os, sys, timeit
sys.path.insert(0, sys.argv[1])
from gateway.core import metrics
timer = metrics.HOT_TIMERS["availability"]
counter = metrics.IN_PROCESS_AVAILABILITY
def one():
    counter.inc()
    timer.observe(200, 0.0007)
def direct():
    counter.child.inc()
    timer._children[2].child.observe(0.0007)
n = 200_000
print(min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6, min(timeit.repeat(direct, number=n, repeat=5)) / n * 1e6)
"""


def micro_us() -> tuple[float, float]:
    """µs of the instrumentation of one availability request, batched and written straight to
    prometheus-client (multiprocess mode, best of 5)."""
    with tempfile.TemporaryDirectory() as path:
        out = subprocess.run([sys.executable, "-c", MICRO, str(ROOT)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": path})
    batched, direct = out.stdout.split()
    return float(batched), float(direct)


def cpu_seconds(port: int) -> float:
    """User + system CPU seconds of the `flashgate serve --port <port>` processes (the master and its
    forked workers share its command line)."""
    tick = os.sysconf("SC_CLK_TCK")
    needle = f"--port\0{port}\0".encode()
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    batched, direct = micro_us()
    print(f"instrumentation of one availability request (multiprocess mode): {batched:.2f} us batched, "
          f"{direct:.2f} us written straight to prometheus-client")

    results: dict[str, list[dict]] = {"on": [], "off": []}
    scrape_ms = scrape_kb = warm_ms = 0.0
    with bench_stack() as settings, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "get.lua"
        script.write_text('wrk.method = "GET"\n')
        key = asyncio.run(new_org_key(settings))
        event_id = None
        for _ in range(args.repeat):
            for mode in ("on", "off"):
                os.environ["FLASHGATE_METRICS_ENABLED"] = "1" if mode == "on" else "0"
                try:
                    with gateway(settings) as url:
                        if event_id is None:
                            auth = {"Authorization": f"Bearer {key}"}
                            event_id = httpx.post(url + "/v1/events", json=SPEC, headers=auth, timeout=30).json()["id"]
                            assert httpx.post(f"{url}/v1/events/{event_id}/open", headers=auth,
                                              timeout=30).status_code == 200
                        target = f"{url}/v1/events/{event_id}/availability?seats=0"
                        assert httpx.get(target, timeout=10).status_code == 200
                        wrk(target, script, duration=2, connections=args.connections)  # warm both workers
                        port = int(url.rsplit(":", 1)[1])
                        cpu = cpu_seconds(port)
                        run = wrk(target, script, duration=args.duration, connections=args.connections)
                        run["cpu_us"] = (cpu_seconds(port) - cpu) / (run["rps"] * args.duration) * 1e6
                        results[mode].append(run)
                        print(f"metrics {mode:>3}: {run['rps']:>9,.0f} req/s  p50 {run.get('p50_ms', 0):.2f} ms  "
                              f"p99 {run.get('p99_ms', 0):.2f} ms  gateway CPU {run['cpu_us']:.1f} us/request",
                              flush=True)
                        if mode == "on":
                            times = []
                            for _ in range(6):
                                started = time.perf_counter()
                                body = httpx.get(url + "/metrics", timeout=30).content
                                times.append((time.perf_counter() - started) * 1000)
                            scrape_ms, warm_ms, scrape_kb = times[0], statistics.median(times[1:]), len(body) / 1024
                finally:
                    os.environ.pop("FLASHGATE_METRICS_ENABLED", None)

    on = statistics.median(r["rps"] for r in results["on"])
    off = statistics.median(r["rps"] for r in results["off"])
    cpu_on = statistics.median(r["cpu_us"] for r in results["on"])
    cpu_off = statistics.median(r["cpu_us"] for r in results["off"])
    print("| metrics | req/s (median) | runs | gateway CPU us/request (median) | runs |")
    print("| --- | --- | --- | --- | --- |")
    for mode, median, cpu in (("on", on, cpu_on), ("off", off, cpu_off)):
        runs = " · ".join(f"{r['rps']:,.0f}" for r in results[mode])
        cpus = " · ".join(f"{r['cpu_us']:.1f}" for r in results[mode])
        print(f"| {mode} | {median:,.0f} | {runs} | {cpu:.1f} | {cpus} |")
    print(f"req/s on / off: {on / off:.3f}; CPU per request on - off: {cpu_on - cpu_off:+.1f} us "
          f"({(cpu_on / cpu_off - 1) * 100:+.1f} %)")
    print(f"/metrics scrape after the load: first {scrape_ms:.1f} ms, then {warm_ms:.1f} ms (median of 5), "
          f"{scrape_kb:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
