"""Do the other routes stay fast while the payment provider storms?

A real gateway (granian, 2 workers) in front of the payment-provider simulator (a real HTTP server).
In every phase a checkout load runs (buyers hold one GA ticket and check out; during a storm they send
the refused checkout again with the same key after 0.2 s, more eagerly than the buyer page does), and
measuring clients send the other routes in turn: availability, a hold (released at once), a queue
poll, the organiser's figures. Phases: normal, an `error` storm (every provider call fails: the breaker
opens), normal, a `timeout` storm (every call hangs until the checkout's budget ends). Prints p50/p95
per route and phase and, per storm, the ratio of the other routes' p95 during the storm to their p95
in the normal phases.

Latencies are measured by the Python clients on the same machine: compare the ratio, not the
milliseconds, with other hosts.

Run: .venv/bin/python bench/bench_provider_storm.py [--duration 10] [--clients 8] [--buyers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from _stack import bench_stack, gateway, new_org_key

from gateway.core.config import Settings
from gateway.core.tokens import TokenSigner
from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import stop_process

STORMS = {
    "error": {"duration_s": 3600, "failure_rate": 1.0, "mode": "error"},
    "timeout": {"duration_s": 3600, "failure_rate": 1.0, "mode": "timeout", "timeout_ms": 10000},
}
ROUTES = ("availability", "hold", "queue poll", "organiser stats")


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Bench:
    def __init__(self, url: str, key: str, signer: TokenSigner, event_id: int, queued_id: int) -> None:
        self.url, self.key, self.signer = url, key, signer
        self.event_id, self.queued_id = event_id, queued_id
        self.serial = 0
        self.checkouts: dict[int | str, int] = {}  # answers by status (refused holds by their error)

    def buyer(self) -> dict[str, str]:
        """A new buyer, from an address of its own (the gateway trusts loopback as its proxy)."""
        self.serial += 1
        n = self.serial
        token = self.signer.sign("b", {"sub": f"storm{n}", "exp": int(time.time()) + 3600})
        return {"Authorization": f"Bearer {token}", "X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}

    async def checkout_load(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """A buyer after another: hold, then checkout until it is not a 503 (same key, 0.2 s apart)."""
        while not stop.is_set():
            who = self.buyer()
            hold = await client.post(f"/v1/events/{self.event_id}/holds", json={"ga": {"floor": 1}}, headers=who)
            if hold.status_code != 201:
                self.checkouts[f"hold {hold.status_code} {hold.text[:80]}"] = 1
                await asyncio.sleep(0.2)
                continue
            key = f"bench-{self.serial:010d}"
            while not stop.is_set():
                resp = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                                         headers={**who, "Idempotency-Key": key})
                self.checkouts[resp.status_code] = self.checkouts.get(resp.status_code, 0) + 1
                if resp.status_code != 503:
                    break
                await asyncio.sleep(0.2)

    async def measure(self, client: httpx.AsyncClient, stop: asyncio.Event, out: dict[str, list]) -> None:
        """The other routes in turn, each request timed (ms); a refused one is counted as an error."""
        who = self.buyer()
        org = {"Authorization": f"Bearer {self.key}"}
        queues = []  # places in the waiting room, polled in turn (each token's polls are rate-limited)
        for _ in range(20):
            joined = await client.post(f"/v1/events/{self.queued_id}/queue", headers=self.buyer())
            joined.raise_for_status()
            queues.append({"Authorization": f"Bearer {joined.json()['queue_token']}"})
        i = 0
        while not stop.is_set():
            route = ROUTES[i % len(ROUTES)]
            i += 1
            start = time.perf_counter()
            if route == "availability":
                resp = await client.get(f"/v1/events/{self.event_id}/availability")
            elif route == "hold":
                resp = await client.post(f"/v1/events/{self.event_id}/holds", json={"ga": {"floor": 1}}, headers=who)
            elif route == "queue poll":
                resp = await client.get(f"/v1/events/{self.queued_id}/queue", headers=queues[i % len(queues)])
            else:
                resp = await client.get(f"/v1/events/{self.event_id}/stats", headers=org)
            out[route].append((time.perf_counter() - start) * 1000)
            if resp.status_code >= 400:
                out.setdefault("errors", []).append(f"{route} {resp.status_code} {resp.text[:80]}")
            if route == "hold" and resp.status_code == 201:
                await client.delete(f"/v1/holds/{resp.json()['hold_id']}", headers=who)

    async def settle(self, timeout: float = 60.0) -> None:
        """After a storm: one buyer retries (same key, 0.5 s apart) until the breaker lets a checkout through."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            who = self.buyer()
            hold = await client.post(f"/v1/events/{self.event_id}/holds", json={"ga": {"floor": 1}}, headers=who)
            hold.raise_for_status()
            deadline = time.monotonic() + timeout
            while (await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                                     headers={**who, "Idempotency-Key": f"settle-{self.serial:08d}"})).status_code != 201:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the payment breaker did not close after the storm")
                await asyncio.sleep(0.5)

    async def phase(self, seconds: float, clients: int, buyers: int) -> dict[str, list]:
        out: dict[str, list] = {route: [] for route in ROUTES}  # ms per route, and "errors"
        stop = asyncio.Event()
        self.checkouts = {}
        limits = httpx.Limits(max_connections=clients + buyers + 4)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            tasks = [asyncio.create_task(self.checkout_load(client, stop)) for _ in range(buyers)]
            tasks += [asyncio.create_task(self.measure(client, stop, out)) for _ in range(clients)]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
        return out


async def run(args: argparse.Namespace, settings: Settings, url: str, sim_url: str) -> dict[str, dict]:
    """The phases against a running gateway and simulator; their latencies per route."""
    with httpx.Client(base_url=sim_url, timeout=5) as sim:
                key = await new_org_key(settings)
                org = {"Authorization": f"Bearer {key}"}
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    ids = []
                    for name, queue in (("storm bench", None), ("storm bench queue", {"enabled": True,
                                                                                        "admission_rate": 1})):
                        spec = {"name": name, "currency": "EUR", "hold_ttl_s": 3600, "per_buyer_limit": 8,
                                "ga": [{"code": "floor", "name": "Floor", "capacity": 1_000_000, "price_minor": 2500}]}
                        if queue:
                            spec["queue"] = queue
                        event = (await client.post("/v1/events", json=spec, headers=org)).json()
                        (await client.post(f"/v1/events/{event['id']}/open", headers=org)).raise_for_status()
                        ids.append(event["id"])
                bench = Bench(url, key, TokenSigner(settings.secret_bytes), *ids)
                await bench.phase(2, args.clients, args.buyers)  # warm-up
                results: dict[str, dict[str, list[float]]] = {}
                for name in ("normal", "error", "normal 2", "timeout"):
                    sim.put("/_config", json={"storm": STORMS.get(name)}).raise_for_status()
                    if name not in STORMS:
                        await bench.settle()  # the breaker closed again: a normal phase
                    results[name] = await bench.phase(args.duration, args.clients, args.buyers)
                    print(f"{name:>9}: checkout answers {dict(bench.checkouts)}; other routes' errors "
                          f"{len(results[name].get('errors', []))} {sorted(set(results[name].get('errors', [])))[:3]}", flush=True)
                sim.put("/_config", json={"storm": None}).raise_for_status()
    return results


def report(results: dict[str, dict]) -> None:
    print(f"\n{'route':<16}" + "".join(f"{name + ' p50/p95 ms':>24}" for name in results))
    for route in ROUTES:
        print(f"{route:<16}" + "".join(f"{p(r[route], 0.5):>11.1f} / {p(r[route], 0.95):>8.1f}   "
                                       for r in results.values()))
    normal = [v for name in ("normal", "normal 2") for route in ROUTES for v in results[name][route]]
    base = p(normal, 0.95)
    print(f"\nall other routes, p95: normal {base:.1f} ms")
    for storm in STORMS:
        during = p([v for route in ROUTES for v in results[storm][route]], 0.95)
        print(f"  {storm} storm: {during:.1f} ms, ratio {during / base:.2f} (target: at most 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="clients sending the other routes (default 8)")
    parser.add_argument("--buyers", type=int, default=16, help="buyers checking out at once (default 16)")
    args = parser.parse_args()
    with bench_stack() as settings:
        sim_proc, sim_url = start_simulator_process(log=Path(tempfile.mkdtemp()) / "sim.log", workers=2,
                                                    redis_url=settings.redis_url)
        os.environ["FLASHGATE_PAYMENTS_URL"] = sim_url
        os.environ["FLASHGATE_TRUSTED_PROXIES"] = "127.0.0.1/32"
        try:
            with gateway(settings) as url:
                results = asyncio.run(run(args, settings, url, sim_url))
        finally:
            stop_process(sim_proc)
    report(results)


if __name__ == "__main__":
    main()
