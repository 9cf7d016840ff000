"""Propagation of a confirmed sale to open live-figures streams (`GET /v1/events/{id}/live`).

A gateway (granian, 2 workers) and a zero-latency payment simulator; `--streams` organiser streams are
opened (raw HTTP/1.1 connections, spread over both workers by the kernel), then buyers make
`--sales` purchases (hold one seat, pay) from `--lanes` concurrent clients. For every sale and every
stream, the delay is: the moment the stream delivered the seat's `sell` change, minus the moment
Redis appended that change (the `changes` stream id is Redis's clock in ms; same machine, same clock).
So it covers the XREAD wake-up, the figures recomputed from Redis, the broadcast and the socket.

Run: .venv/bin/python bench/bench_live.py [--streams 500] [--sales 600] [--lanes 12]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import multiprocessing
import os
import re
import selectors
import socket
import statistics
import time
from urllib.parse import urlsplit

import httpx
import redis

from _stack import bench_stack, gateway, new_org_key

from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import stop_process
from gateway.store.keys import event_key

SELL = re.compile(rb"\[3,\[(\d+)")
FIGURES_ID = re.compile(rb"^id: (\d+)-(\d+)\nevent: figures", re.MULTILINE)


def readers(url: str, path: str, key: str, n: int, opened_q, stop_evt, out_q) -> None:
    """The streams, read in a process of their own with plain non-blocking sockets: a read only records
    (arrival time, bytes); parsing waits until the run is over, so a reading is not delayed by the
    parsing of the 499 others."""
    parts = urlsplit(url)
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    chunks: list[list[tuple[float, bytes]]] = [[] for _ in range(n)]
    for i in range(n):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        status, rest = head.split(b"\r\n", 1)[0], head.split(b"\r\n\r\n", 1)[1]
        if b" 200 " not in status:
            raise SystemExit(f"bench: stream refused: {head[:200]!r}")
        chunks[i].append((time.time(), rest))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    opened_q.put(n)
    check = time.monotonic()
    while True:
        for k, _ in sel.select(timeout=0.1):
            now = time.time()
            try:
                data = k.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            if data:
                chunks[k.data].append((now, data))
            else:
                sel.unregister(k.fileobj)
        if time.monotonic() - check > 0.2:
            check = time.monotonic()
            if stop_evt.is_set():
                break
    seen: dict[int, list[float]] = {}
    figures: list[list[tuple]] = []
    for got in chunks:  # chunked transfer framing sits between our writes, never inside an event
        buffer, mine = b"", []
        for at, data in got:
            buffer += data
            cut = buffer.rfind(b"\n\n")
            if cut < 0:
                continue
            complete, buffer = buffer[:cut], buffer[cut + 2:]
            for m in FIGURES_ID.finditer(complete):
                mine.append(((int(m.group(1)), int(m.group(2))), at))
            if b"event: seats" in complete:
                for m in SELL.finditer(complete):
                    seen.setdefault(int(m.group(1)), []).append(at)
        figures.append(mine)
    out_q.put((seen, figures))


async def sales(url: str, event_id: int, seats: list[str], lanes: int) -> tuple[int, float]:
    done = 0

    async def lane(chunk: list[str]) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            for seat in chunk:
                try:
                    me = {"Authorization": "Bearer " + (await c.post("/v1/buyer-token")).json()["buyer_token"]}
                    h = await c.post(f"/v1/events/{event_id}/holds", json={"seats": [seat]}, headers=me)
                    if h.status_code != 201:
                        continue
                    o = await c.post(f"/v1/holds/{h.json()['hold_id']}/checkout", json={},
                                     headers={**me, "Idempotency-Key": f"live-bench-{seat}"})
                    done += o.status_code == 201
                except httpx.HTTPError:  # a purchase that failed is not measured (the sold count says so)
                    continue

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(seats[i::lanes]) for i in range(lanes)))
    return done, time.perf_counter() - t0


def run(url: str, key: str, event_id: int, n_streams: int, seats: list[str], lanes: int,
        redis_url: str, prefix: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    opened_q, out_q, stop_evt = ctx.Queue(), ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=readers, args=(url, f"/v1/events/{event_id}/live", key, n_streams, opened_q,
                                             stop_evt, out_q))
    t0 = time.perf_counter()
    proc.start()
    opened_q.get(timeout=180)
    open_s = time.perf_counter() - t0
    time.sleep(2)
    sold, sale_s = asyncio.run(sales(url, event_id, seats, lanes))
    time.sleep(2)
    stop_evt.set()
    seen, figures = out_q.get(timeout=120)
    proc.join(30)
    client = redis.Redis.from_url(redis_url)
    appended: dict[int, tuple[tuple[int, int], float]] = {}
    for entry_id, fields in client.xrange(event_key(prefix, event_id, "changes")):
        if fields[b"op"] == b"3":
            ms, seq = (int(x) for x in entry_id.split(b"-"))
            appended[int(fields[b"s"].split(b",")[0])] = ((ms, seq), ms / 1000)
    client.close()
    seat_delays = sorted((t - appended[s][1]) * 1000 for s, times in seen.items() if s in appended for t in times)
    missing = sum(n_streams - len(seen.get(s, [])) for s in appended)
    figure_delays = []
    for got in figures:
        ids = [g[0] for g in got]
        for rid, at in appended.values():
            i = bisect.bisect_left(ids, rid)
            if i < len(ids):
                figure_delays.append((got[i][1] - at) * 1000)
    return {"open_s": open_s, "sold": sold, "sale_s": sale_s, "seats": seat_delays, "missing": missing,
            "figures": sorted(figure_delays)}


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--sales", type=int, default=600)
    parser.add_argument("--lanes", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with bench_stack() as settings:
        sim, sim_url = start_simulator_process(latency_ms=0)
        os.environ["FLASHGATE_PAYMENTS_URL"] = sim_url
        try:
            key = asyncio.run(new_org_key(settings))
            with gateway(settings, workers=args.workers) as url:
                h = {"Authorization": f"Bearer {key}"}
                rows = max(1, args.sales // 100 + 1)
                spec = {"name": "live bench", "currency": "EUR", "hold_ttl_s": 600, "per_buyer_limit": 4,
                        "price_tiers": {"p": 5000},
                        "sections": [{"name": s, "rows": [{"label": str(r + 1), "seats": 25, "price_tier": "p"}
                                                          for r in range(rows)]} for s in "ABCD"]}
                event = httpx.post(url + "/v1/events", json=spec, headers=h, timeout=60).json()
                httpx.post(url + f"/v1/events/{event['id']}/open", headers=h, timeout=60).raise_for_status()
                seats = [f"{s}-{r + 1}-{n + 1}" for s in "ABCD" for r in range(rows) for n in range(25)]
                result = run(url, key, event["id"], args.streams, seats[:args.sales], args.lanes,
                             settings.redis_url or "", settings.redis_prefix)
        finally:
            stop_process(sim)
    print(f"{'measure':<52}{'value':>12}")
    opened = f"{f'open streams ({args.workers} gateway workers)':<52}{args.streams:>12,}"
    print(f"{opened}  opened in {result['open_s']:.1f} s")
    print(f"{'sales (hold + pay, one seat each)':<52}{result['sold']:>12,}  in {result['sale_s']:.1f} s "
          f"({result['sold'] / result['sale_s']:.0f}/s)")
    for name, label in (("seats", "the sale's seat change"), ("figures", "figures that include the sale")):
        d = result[name]
        if not d:
            continue
        missing = f"  missing {result['missing']}" if name == "seats" else ""
        print(f"{label + ': deliveries':<52}{len(d):>12,}{missing}")
        print(f"{'  delay p50 / p90 / p99 / max (ms)':<52}{pct(d, .5):>12.1f}  "
              f"{pct(d, .9):.1f} / {pct(d, .99):.1f} / {d[-1]:.1f}   mean {statistics.fmean(d):.1f}")
    worst = max(pct(result["figures"], .99), pct(result["seats"], .99))
    print(f"{'p99 <= 150 ms required (50 ms targeted)':<52}{'pass' if worst <= 150 else 'FAIL':>12}")


if __name__ == "__main__":
    main()
