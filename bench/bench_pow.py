"""What the waiting room's proof of work costs a buyer: the buyer page's solve time in headless Chromium.

Starts a gateway with `FLASHGATE_QUEUE_POW=1` (private Redis and Postgres unless REDIS_URL /
DATABASE_URL are set), opens a queue-mode event's buyer page in fresh browser profiles, and reads
the `flashgate-proof-of-work` measure the page records around its WebCrypto solve (buyer.js). For
comparison it also solves the same number of challenges with Python's hashlib (one core, C SHA-256):
what a script pays without a browser.

    .venv/bin/python bench/bench_pow.py --runs 30 [--bits 16]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, gateway, new_org_key  # noqa: E402
from gateway.core.config import Settings  # noqa: E402
from gateway.waiting_room.pow import solve  # noqa: E402


def chromium() -> str:
    for candidate in (os.environ.get("FLASHGATE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SystemExit("bench: Chromium not found (apt-get install chromium, or set FLASHGATE_CHROMIUM)")


def spread(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return (f"median {statistics.median(values):.2f} s, p90 {p90:.2f} s, min {values[0]:.2f} s, "
            f"max {values[-1]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--bits", type=int, default=Settings.model_fields["queue_pow_bits"].default)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    os.environ["FLASHGATE_QUEUE_POW"] = "1"
    os.environ["FLASHGATE_QUEUE_POW_BITS"] = str(args.bits)
    with bench_stack() as settings, gateway(settings, workers=1) as url, httpx.Client(base_url=url) as api:
        key = asyncio.run(new_org_key(settings))
        head = {"Authorization": f"Bearer {key}"}
        spec = {"name": "Proof bench", "currency": "EUR", "queue": {"enabled": True, "admission_rate": 1},
                "ga": [{"code": "floor", "name": "Floor", "capacity": 10, "price_minor": 100}]}
        eid = api.post("/v1/events", json=spec, headers=head).json()["id"]
        api.post(f"/v1/events/{eid}/open", headers=head).raise_for_status()
        browser_s: list[float] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), headless=True,
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            for _ in range(args.runs):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{url}/buy/{eid}")
                measure = "performance.getEntriesByName('flashgate-proof-of-work').map((m) => m.duration)"
                while not (durations := page.evaluate(measure)):  # the page's CSP forbids wait_for_function
                    time.sleep(0.05)
                browser_s.append(durations[0] / 1000)
                context.close()
            browser.close()
        python_s: list[float] = []
        for i in range(args.runs):
            started = time.perf_counter()
            solve(f"bench-challenge-{i}", args.bits)
            python_s.append(time.perf_counter() - started)
    print(f"difficulty {args.bits} bits (~{2 ** args.bits:,} hashes on average), {args.runs} solves each, "
          f"{os.cpu_count()} CPUs")
    print(f"  buyer page, headless Chromium (WebCrypto): {spread(browser_s)}")
    print(f"  Python hashlib, one core:                  {spread(python_s)}")


if __name__ == "__main__":
    main()
