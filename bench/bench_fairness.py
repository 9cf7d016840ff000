"""Waiting-room fairness run: 1,000 buyers on a 2-worker gateway, measured as each buyer sees it.

Starts a real gateway (granian, 2 workers) and the admission worker against a private Redis and
Postgres (or REDIS_URL / DATABASE_URL when set), creates one GA event whose waiting room admits at
`--rate` places per second, and lets `--buyers` buyers join at once, each from its own address
(`X-Forwarded-For` behind a trusted proxy, as buyers arrive through a load balancer). Every buyer
then polls at the `poll_after_s` it is told, sending back the position it was last shown (`seen`)
as the buyer page does, until admitted. Requests of one buyer go over whichever pooled connection
is free, so consecutive polls reach both workers.

Prints:
- positions that rose between two answers to one buyer (the docs promise none);
- admission order against join order (inversions);
- the admission rate measured in steady state against the configured rate (error in %);
- the ETA shown at join against the actual wait (from the admission time the leader wrote):
  signed error `(waited - eta) / eta`, median and the share within +-20 %.

    .venv/bin/python bench/bench_fairness.py [--buyers 1000] [--rate 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import ROOT, bench_stack, env_for, gateway, new_org_key  # noqa: E402
from gateway.stack.embedded import spawn, stop_process  # noqa: E402


def address(i: int) -> str:
    return f"10.{i // 250 % 250}.{i % 250}.7"  # one /24 per buyer: the per-prefix mint limit is not the subject


async def run(url: str, key: str, buyers: int, rate: float) -> dict:
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        spec = {"name": "Fairness run", "currency": "EUR", "hold_ttl_s": 600, "per_buyer_limit": 8,
                "price_tiers": {"p1": 1000}, "ga": [{"code": "floor", "name": "Floor",
                                                     "capacity": 100_000, "price_minor": 2500}],
                "queue": {"enabled": True, "admission_rate": rate}}
        auth = {"Authorization": f"Bearer {key}"}
        event = (await client.post("/v1/events", json=spec, headers=auth)).json()
        ev = event["id"]
        opened = await client.post(f"/v1/events/{ev}/open", headers=auth)
        assert opened.status_code == 200, opened.text

        async def mint(i: int) -> str:
            resp = await client.post("/v1/buyer-token", headers={"X-Forwarded-For": address(i)})
            assert resp.status_code == 201, resp.text
            return resp.json()["buyer_token"]

        tokens = await asyncio.gather(*(mint(i) for i in range(buyers)))
        rises: list[tuple[int, int, int]] = []
        record: list[dict] = [{} for _ in range(buyers)]
        start = asyncio.Event()

        async def buyer(i: int) -> None:
            xff = {"X-Forwarded-For": address(i)}
            await start.wait()
            t0 = time.time()
            resp = await client.post(f"/v1/events/{ev}/queue", headers={**xff,
                                                                          "Authorization": f"Bearer {tokens[i]}"})
            body = resp.json()
            assert resp.status_code in (200, 201), resp.text
            qt = body["queue_token"]
            record[i].update(joined=t0, place=body.get("place"), eta=body.get("eta_s"), polls=0)
            last = body.get("position")
            while body["status"] == "waiting":
                await asyncio.sleep(body.get("poll_after_s") or 1.0)
                params = {"seen": last} if last is not None else {}
                resp = await client.get(f"/v1/events/{ev}/queue", params=params,
                                        headers={**xff, "Authorization": f"Bearer {qt}"})
                if resp.status_code == 429:
                    continue
                body = resp.json()
                record[i]["polls"] += 1
                pos = body.get("position")
                if body["status"] == "waiting" and last is not None and pos > last:
                    rises.append((i, last, pos))
                if body["status"] == "waiting":
                    last = pos
            record[i]["status"] = body["status"]
            if body["status"] == "admitted":
                record[i]["admitted_at"] = body["expires_at"] - TTL
                record[i]["seen_admitted"] = time.time()

        tasks = [asyncio.create_task(buyer(i)) for i in range(buyers)]
        start.set()
        await asyncio.gather(*tasks)
    return {"records": record, "rises": rises}


TTL = 900


def report(result: dict, rate: float) -> None:
    recs = result["records"]
    admitted = [r for r in recs if r.get("status") == "admitted"]
    print(f"buyers: {len(recs)}, admitted {len(admitted)}, polls {sum(r['polls'] for r in recs):,}")
    print(f"positions that rose: {len(result['rises'])}" + (f" e.g. {result['rises'][:5]}" if result["rises"] else ""))
    by_place = sorted(admitted, key=lambda r: r["place"])
    inversions = sum(1 for a, b in zip(by_place, by_place[1:]) if b["admitted_at"] < a["admitted_at"])
    print(f"admission order vs place order: {inversions} inversions")
    times = sorted(r["admitted_at"] for r in admitted)
    first, last = times[0], times[-1]
    # Steady state: whole seconds after the slow start (first 3 s) and before the last second.
    window = [t for t in times if first + 3 <= t < last]
    span = (last - (first + 3))
    measured = len(window) / span if span > 0 else float("nan")
    print(f"admission rate: configured {rate:g}/s, measured {measured:.2f}/s over {span} s of steady state "
          f"(error {100 * (measured - rate) / rate:+.2f} %)")
    errors = []
    for r in admitted:
        eta = r.get("eta")
        if eta:
            waited = r["admitted_at"] - r["joined"]
            errors.append((eta, (waited - eta) / eta))
    for label, sel in (("all", errors), ("ETA >= 5 s", [e for e in errors if e[0] >= 5])):
        values = [e for _, e in sel]
        if not values:
            continue
        within = sum(1 for v in values if abs(v) <= 0.2) / len(values)
        q = statistics.quantiles(values, n=10)
        print(f"ETA error ({label}, {len(values)} buyers): median {statistics.median(values):+.1%}, "
              f"p10 {q[0]:+.1%}, p90 {q[-1]:+.1%}, within +-20 %: {within:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import os

    os.environ.update({"FLASHGATE_TRUSTED_PROXIES": "127.0.0.1/32", "FLASHGATE_QUEUE_POLL_AFTER_S": "2"})
    with bench_stack() as settings:
        key = asyncio.run(new_org_key(settings))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        leader = spawn([sys.executable, "-m", "gateway.cli", "worker", "admission"],
                       log=settings.data_dir / "admission.log", env=env_for(settings), cwd=str(ROOT))
        try:
            with gateway(settings, workers=args.workers) as url:
                print(f"gateway: granian, {args.workers} workers; {args.buyers} buyers, rate {args.rate:g}/s, "
                      f"poll_after_s 2")
                result = asyncio.run(run(url, key, args.buyers, args.rate))
        finally:
            stop_process(leader)
    report(result, args.rate)


if __name__ == "__main__":
    main()
