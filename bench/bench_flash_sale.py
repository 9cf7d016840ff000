"""The flash sale end to end, with k6: a whole local platform (`flashgate up`, 2 gateway workers,
workers, payment simulator) in a temporary data directory, one GA event seeded through the API,
a k6 scenario from `loadtest/` (flash_sale.js for `queue`, open_sale.js for `open`, given a seed file
as `flashgate loadtest` writes it), then `flashgate audit`. Every buyer holds 1 GA ticket and pays
(the scenarios' other buyers, who pick seats, abandon, pay late or are greedy, are switched off here:
the figures compare with other ticketing systems).

    .venv/bin/python bench/bench_flash_sale.py queue --buyers 3000 --capacity 1000 --rate 300
    .venv/bin/python bench/bench_flash_sale.py open --vus 200 --attempts 3000 --capacity 1000 [--lean]
    .venv/bin/python bench/bench_flash_sale.py open ... --sim '{"latency_p50_ms": 300, "latency_p99_ms": 2000}'
    .venv/bin/python bench/bench_flash_sale.py open ... --sim '{"rate_limit_per_s": 100}'

Prints purchases/s, purchase latency percentiles, sold vs capacity, 5xx, waiting buyers told
"sold out", breaker openings seen in the gateway log, and the audit verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.loadtest.target import start_private, stop_private  # noqa: E402

K6 = ROOT / ".venv" / "bin" / "k6"


def start_platform(data: Path) -> tuple[subprocess.Popen, dict]:
    """`flashgate up --demo` in `data` (the load-test runner's private platform: its own Redis, Postgres
    and simulator; X-Forwarded-For from this machine trusted, as the k6 buyers name their own addresses)."""
    target = start_private(data)
    return target.proc, json.loads((data / "stack.json").read_text())


def seed(stack: dict, capacity: int, queue_rate: float | None) -> dict:
    """A GA event, opened; returns the seed file's content (loadtest/README.md)."""
    key = stack["demo"]["api_key"]
    h = {"Authorization": f"Bearer {key}"}
    spec = {"name": "k6 flash sale", "currency": "EUR", "per_buyer_limit": 8, "hold_ttl_s": 600,
            "ga": [{"code": "floor", "name": "Floor", "capacity": capacity, "price_minor": 5000}]}
    if queue_rate:
        spec["queue"] = {"enabled": True, "admission_rate": queue_rate}
    with httpx.Client(base_url=stack["gateway_url"], timeout=60) as c:
        event = c.post("/v1/events", json=spec, headers=h).raise_for_status().json()
        c.post(f"/v1/events/{event['id']}/open", headers=h).raise_for_status()
    return {"event_id": event["id"], "queue": bool(queue_rate), "ga_type": "floor", "ga_capacity": capacity,
            "section": "", "seats": [], "per_buyer_limit": spec["per_buyer_limit"], "hold_ttl_s": spec["hold_ttl_s"],
            "api_key": key}


def watch_pacing(stack: dict, event: int, proc: subprocess.Popen) -> list[dict]:
    """The payment pacing figures of all gateway workers (from the event's stats), once a second while k6 runs."""
    samples = []
    h = {"Authorization": f"Bearer {stack['demo']['api_key']}"}
    with httpx.Client(base_url=stack["gateway_url"], timeout=5) as c:
        while proc.poll() is None:
            try:
                stats = c.get(f"/v1/events/{event}/stats", headers=h).json()
                pacing = stats["providers"]["payments"]["pacing"]
                if pacing.get("workers"):
                    samples.append(pacing)
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1.0)
    return samples


def summarise_pacing(samples: list[dict]) -> str:
    busy = [p for p in samples if p.get("in_flight") or p.get("queued")]
    if not busy:
        return "no provider calls seen"
    med = (lambda xs: sorted(xs)[len(xs) // 2])
    return (f"limit (sum of workers) median {med([p['limit'] for p in busy])}, in flight median "
            f"{med([p['in_flight'] for p in busy])}, queued median {med([p['queued'] for p in busy])} / max "
            f"{max(p['queued'] for p in busy)}, rtt ms median {med([p['rtt_ms'] or 0 for p in busy])}")


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
    p.add_argument("--duration", type=int, default=300, help="seconds: k6 stops every buyer by then")
    p.add_argument("--ramp", type=float, default=None, help="arrivals spread over (s): 10 queue, 1 open")
    p.add_argument("--sim", default="{}", help="JSON for the simulator's PUT /_config")
    p.add_argument("--lean", action="store_true",
                   help="buyers only take a buyer token, hold and pay (no availability read, no order fetch): "
                        "the shape other ticketing systems are compared in")
    args = p.parse_args()

    data = Path(tempfile.mkdtemp(prefix="flashgate-k6-"))
    proc, stack = start_platform(data)
    try:
        seed_data = seed(stack, args.capacity, args.rate if args.scenario == "queue" else None)
        event = seed_data["event_id"]
        seed_file = data / "seed.json"
        seed_file.write_text(json.dumps(seed_data))
        sim_config = json.loads(args.sim)
        if sim_config:
            httpx.put(stack["payments_url"] + "/_config", json=sim_config, timeout=10).raise_for_status()
        script = ROOT / "loadtest" / ("flash_sale.js" if args.scenario == "queue" else "open_sale.js")
        summary_path = data / "summary.json"
        buyers = args.buyers if args.scenario == "queue" else args.attempts
        vus = args.vus or (args.buyers if args.scenario == "queue" else 200)
        ramp = args.ramp if args.ramp is not None else (10 if args.scenario == "queue" else 1)
        knobs = {"BASE_URL": stack["gateway_url"], "SEED_FILE": str(seed_file), "VUS": str(vus),
                 "DURATION": str(args.duration), "RAMP_S": f"{ramp:g}", "BUYERS": str(buyers), "QTY_MAX": "1",
                 "PICK_PCT": "0", "BEST_PCT": "0", "ABANDON_PCT": "0", "LATE_PAY_PCT": "0", "GREEDY_PCT": "0"}
        if args.lean:  # the comparison shape: buyer token -> hold -> checkout, nothing else
            knobs.update(READ_AVAILABILITY="0", FETCH_ORDER="0")
        started = time.monotonic()
        k6_proc = subprocess.Popen([str(K6), "run", "--quiet", "--summary-export", str(summary_path),
                                    *[a for name, value in knobs.items() for a in ("-e", f"{name}={value}")],
                                    str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pacing = watch_pacing(stack, event, k6_proc)
        out, err = k6_proc.communicate()
        k6 = subprocess.CompletedProcess(k6_proc.args, k6_proc.returncode, out, err)
        elapsed = time.monotonic() - started
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        with httpx.Client(base_url=stack["gateway_url"], timeout=30) as c:
            avail = c.get(f"/v1/events/{event}/availability", params={"seats": 0}).json()
        time.sleep(5)  # the ledger catches up
        audit = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", str(event)], cwd=ROOT,
                               env={**os.environ, "FLASHGATE_DATA_DIR": str(data)}, capture_output=True, text=True)
        log_dir = data / "log"
        breaker_opens = sum(p.read_text(errors="replace").count(" opened (last fault")  # gateway/providers/breaker.py
                            for p in log_dir.glob("*.log")) if log_dir.exists() else None
        purchases = metric(summary, "purchases", "count") or 0
        sold = avail["ga"][0]["sold"]
        first_buy = metric(summary, "purchase_ms", "max")
        rows = [
            ("scenario", f"{args.scenario}: {script.name}{' (lean: token, hold, pay)' if args.lean else ''}, simulator {args.sim}"),
            ("k6 wall time (s)", f"{elapsed:.1f}"),
            ("purchases (k6)", f"{purchases:.0f}"),
            ("sold / capacity", f"{sold} / {args.capacity}" + ("  SOLD OUT" if sold >= args.capacity else "")),
            ("purchases per second (over the k6 run)", f"{purchases / elapsed:.1f}"),
            ("purchase ms p50 / p95 / p99 / max", " / ".join(
                f"{metric(summary, 'purchase_ms', s) or 0:.0f}" for s in ("med", "p(95)", "p(99)", "max"))),
            ("queue wait ms p50 / p99", " / ".join(
                f"{metric(summary, 'queue_wait_ms', s) or 0:.0f}" for s in ("med", "p(99)"))),
            ("told sold out (queue, availability / hold) / gave up waiting",
             f"{metric(summary, 'told_sold_out', 'count') or 0:.0f} / "
             f"{metric(summary, 'hold_sold_out', 'count') or 0:.0f} / "
             f"{metric(summary, 'gave_up_waiting', 'count') or 0:.0f}"),
            ("503 retried (hold / checkout) / 5xx errors",
             f"{metric(summary, 'retried_503', 'count') or 0:.0f} ({metric(summary, 'retried_503_hold', 'count') or 0:.0f}"
             f" / {metric(summary, 'retried_503_checkout', 'count') or 0:.0f}) / "
             f"{metric(summary, 'server_errors', 'count') or 0:.0f}"),
            ("503 retried by reason", ", ".join(
                f"{r} {metric(summary, f'retried_503_{r}', 'count'):.0f}"
                for r in ("busy", "timeout", "breaker_open", "throttled", "unavailable", "other")
                if metric(summary, f"retried_503_{r}", "count"))),
            ("http requests", f"{metric(summary, 'http_reqs', 'count') or 0:.0f}"),
            ("breaker openings in logs", str(breaker_opens)),
            ("payment pacing while buying", summarise_pacing(pacing)),
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
        stop_private(proc)


if __name__ == "__main__":
    main()
