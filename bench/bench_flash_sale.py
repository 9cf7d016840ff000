"""The flash sale end to end, with k6: a whole local platform (`flashgate up`, 2 gateway workers,
workers, payment simulator) in a temporary data directory, one GA event seeded through the API,
a k6 scenario from `loadtest/`, then `flashgate audit`.

    .venv/bin/python bench/bench_flash_sale.py queue --buyers 3000 --capacity 1000 --rate 300
    .venv/bin/python bench/bench_flash_sale.py open --vus 200 --attempts 3000 --capacity 1000
    .venv/bin/python bench/bench_flash_sale.py open ... --sim '{"latency_p50_ms": 300, "latency_p99_ms": 2000}'
    .venv/bin/python bench/bench_flash_sale.py open ... --sim '{"rate_limit_per_s": 100}'

Prints purchases/s, purchase latency percentiles, sold vs capacity, 5xx, waiting buyers told
"sold out", breaker openings seen in the gateway log, and the audit verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.stack.embedded import free_port  # noqa: E402

K6 = ROOT / ".venv" / "bin" / "k6"


def start_platform(data: Path, port: int) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "FLASHGATE_DATA_DIR": str(data)}
    for name in ("REDIS_URL", "DATABASE_URL"):
        env.pop(name, None)
    log = open(data / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--demo", "--port", str(port), "--workers",
                             "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (data / "stack.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("flashgate up did not start:\n" + (data / "up.log").read_text()[-3000:])
        time.sleep(0.5)
    return proc, json.loads((data / "stack.json").read_text())


def stop_platform(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def seed(stack: dict, capacity: int, queue_rate: float | None) -> int:
    key = stack["demo"]["api_key"]
    h = {"Authorization": f"Bearer {key}"}
    spec = {"name": "k6 flash sale", "currency": "EUR", "per_buyer_limit": 8, "hold_ttl_s": 600,
            "ga": [{"code": "floor", "name": "Floor", "capacity": capacity, "price_minor": 5000}]}
    if queue_rate:
        spec["queue"] = {"enabled": True, "admission_rate": queue_rate}
    with httpx.Client(base_url=stack["gateway_url"], timeout=60) as c:
        event = c.post("/v1/events", json=spec, headers=h).raise_for_status().json()
        c.post(f"/v1/events/{event['id']}/open", headers=h).raise_for_status()
    return event["id"]


def metric(summary: dict, name: str, stat: str) -> float | None:
    m = summary.get("metrics", {}).get(name)
    if not m:
        return None
    return m.get(stat, m.get("values", {}).get(stat))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["queue", "open"])
    p.add_argument("--buyers", type=int, default=3000)
    p.add_argument("--vus", type=int, default=None)
    p.add_argument("--attempts", type=int, default=3000)
    p.add_argument("--capacity", type=int, default=1000)
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--give-up", type=int, default=240)
    p.add_argument("--sim", default="{}", help="JSON for the simulator's PUT /_config")
    args = p.parse_args()

    data = Path(tempfile.mkdtemp(prefix="flashgate-k6-"))
    port = free_port()
    proc, stack = start_platform(data, port)
    try:
        event = seed(stack, args.capacity, args.rate if args.scenario == "queue" else None)
        sim_config = json.loads(args.sim)
        if sim_config:
            httpx.put(stack["payments_url"] + "/_config", json=sim_config, timeout=10).raise_for_status()
        script = ROOT / "loadtest" / ("flash_sale_queue.js" if args.scenario == "queue" else "open_sale.js")
        summary_path = data / "summary.json"
        env = {**os.environ, "BASE_URL": stack["gateway_url"], "EVENT_ID": str(event), "BUYERS": str(args.buyers),
               "VUS": str(args.vus or (args.buyers if args.scenario == "queue" else 200)), "ATTEMPTS": str(args.attempts),
               "GIVE_UP_S": str(args.give_up)}
        started = time.monotonic()
        k6 = subprocess.run([str(K6), "run", "--quiet", "--summary-export", str(summary_path), str(script)],
                            env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        with httpx.Client(base_url=stack["gateway_url"], timeout=30) as c:
            avail = c.get(f"/v1/events/{event}/availability", params={"seats": 0}).json()
        time.sleep(5)  # the ledger catches up
        audit = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", str(event)], cwd=ROOT,
                               env={**os.environ, "FLASHGATE_DATA_DIR": str(data)}, capture_output=True, text=True)
        log_dir = data / "log"
        breaker_opens = sum(p.read_text(errors="replace").count('"state": "open"') +
                            p.read_text(errors="replace").count("breaker opened")
                            for p in log_dir.glob("*.log")) if log_dir.exists() else None
        purchases = metric(summary, "purchases", "count") or 0
        sold = avail["ga"][0]["sold"]
        first_buy = metric(summary, "purchase_ms", "max")
        rows = [
            ("scenario", f"{args.scenario}: {script.name}, simulator {args.sim}"),
            ("k6 wall time (s)", f"{elapsed:.1f}"),
            ("purchases (k6)", f"{purchases:.0f}"),
            ("sold / capacity", f"{sold} / {args.capacity}" + ("  SOLD OUT" if sold >= args.capacity else "")),
            ("purchases per second (over the k6 run)", f"{purchases / elapsed:.1f}"),
            ("purchase ms p50 / p95 / p99 / max", " / ".join(
                f"{metric(summary, 'purchase_ms', s) or 0:.0f}" for s in ("med", "p(95)", "p(99)", "max"))),
            ("queue wait ms p50 / p99", " / ".join(
                f"{metric(summary, 'queue_wait_ms', s) or 0:.0f}" for s in ("med", "p(99)"))),
            ("told sold out / gave up waiting", f"{metric(summary, 'told_sold_out', 'count') or 0:.0f} / "
                                               f"{metric(summary, 'gave_up_waiting', 'count') or 0:.0f}"),
            ("503 retried / 5xx errors", f"{metric(summary, 'retried_503', 'count') or 0:.0f} / "
                                         f"{metric(summary, 'server_errors', 'count') or 0:.0f}"),
            ("http requests", f"{metric(summary, 'http_reqs', 'count') or 0:.0f}"),
            ("breaker openings in logs", str(breaker_opens)),
            ("audit", "PASS" if audit.returncode == 0 else "FAIL"),
        ]
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        if audit.returncode != 0:
            print(audit.stdout[-2000:])
        if k6.returncode not in (0, 99):  # 99: thresholds crossed (reported above)
            print(k6.stdout[-2000:], k6.stderr[-2000:])
        del first_buy
    finally:
        stop_platform(proc)


if __name__ == "__main__":
    main()
