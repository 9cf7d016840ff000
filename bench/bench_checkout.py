"""End-to-end checkouts per second: hold -> checkout (begin_checkout, authorize, capture,
confirm, tickets) through the real gateway (granian, 2 workers) and a zero-latency
payment-provider simulator (a real HTTP server), driven by wrk on the same machine.

Holds are made first (one GA ticket per buyer); wrk then checks them out, each request
with its own hold, buyer token and Idempotency-Key.

Run: .venv/bin/python bench/bench_checkout.py [--duration 5] [--holds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from _stack import bench_stack, gateway, new_org_key, wrk

from gateway.providers.simulator import start_simulator_process
from gateway.core.tokens import TokenSigner
from gateway.stack.embedded import stop_process

WRK_SCRIPT = r"""
local items = {%(items)s}
local counter = 0
local threads = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"payment_method":"card"}'
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end
function init(args)
  -- threads take alternate items, so no two requests share a hold
  counter = first or 0
end
function request()
  local item = items[(counter %% #items) + 1]
  counter = counter + 2
  wrk.headers["Authorization"] = "Bearer " .. item[2]
  wrk.headers["Idempotency-Key"] = "bench-" .. item[1]
  return wrk.format(nil, "/v1/holds/" .. item[1] .. "/checkout")
end
"""


async def make_holds(url: str, event_id: int, tokens: list[str], lanes: int = 32) -> list[tuple[str, str]]:
    """Holds made by `lanes` clients, each sending its share one after another (a shared client pool
    with thousands of waiters is slower than the gateway)."""
    out: list[tuple[str, str]] = []

    async def lane(chunk: list[str]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for token in chunk:
                resp = await client.post(f"/v1/events/{event_id}/holds", json={"ga": {"ga": 1}},
                                         headers={"Authorization": f"Bearer {token}"})
                if resp.status_code == 201:
                    out.append((resp.json()["hold_id"], token))

    await asyncio.gather(*(lane(tokens[i::lanes]) for i in range(lanes)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--holds", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with bench_stack() as settings:
        sim, sim_url = start_simulator_process(latency_ms=0)
        os.environ["FLASHGATE_PAYMENTS_URL"] = sim_url
        os.environ.setdefault("FLASHGATE_PAYMENTS_MAX_CONCURRENCY", "256")
        try:
            key = asyncio.run(new_org_key(settings))
            with gateway(settings) as url:
                h = {"Authorization": f"Bearer {key}"}
                spec = {"name": "checkout bench", "currency": "EUR", "hold_ttl_s": 3600, "per_buyer_limit": 4,
                        "ga": [{"code": "ga", "name": "GA", "capacity": 1_000_000, "price_minor": 4200}]}
                event = httpx.post(url + "/v1/events", json=spec, headers=h, timeout=60).json()
                httpx.post(url + f"/v1/events/{event['id']}/open", headers=h, timeout=60).raise_for_status()
                signer = TokenSigner(settings.secret_bytes)
                exp = int(time.time()) + 3600
                tokens = [signer.sign("b", {"sub": f"cb{i}", "exp": exp}) for i in range(args.holds)]
                t0 = time.perf_counter()
                holds = asyncio.run(make_holds(url, event["id"], tokens))
                made = time.perf_counter() - t0
                probe = httpx.post(url + f"/v1/holds/{holds[-1][0]}/checkout", json={"payment_method": "card"},
                                   headers={"Authorization": f"Bearer {holds[-1][1]}",
                                            "Idempotency-Key": f"bench-{holds[-1][0]}"}, timeout=30)
                if probe.status_code != 201:
                    raise SystemExit(f"bench: a checkout failed: {probe.status_code} {probe.text}")
                items = ",".join(f'{{"{hid}","{tok}"}}' for hid, tok in holds)
                script = Path(tempfile.mkdtemp()) / "checkout.lua"
                script.write_text(WRK_SCRIPT % {"items": items})
                result = wrk(url, script, duration=args.duration, connections=args.connections)
                orders = httpx.get(url + f"/v1/events/{event['id']}/availability?seats=0").json()["ga"][0]["sold"]
        finally:
            stop_process(sim)
    print(f"{'measure':<46}{'value':>12}")
    print(f"{'holds made before the run (HTTP, Python client)':<46}{len(holds):>12,}  in {made:.1f} s")
    print(f"{'checkouts per second (wrk, 2 workers)':<46}{result['rps']:>12,.0f}")
    print(f"{'checkout latency p50 / p99 (ms)':<46}{result.get('p50_ms', 0):>12.2f}  p99 {result.get('p99_ms', 0):.2f}")
    print(f"{'tickets sold (distinct paid orders)':<46}{orders:>12,}")
    if orders >= len(holds):
        print("note: every hold was used; later requests replayed stored answers — raise --holds")


if __name__ == "__main__":
    main()
