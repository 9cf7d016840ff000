"""Which HTTP client should the payment provider use? Measured, not guessed.

Starts the payment simulator as a real server, then, in ONE client process with N concurrent
tasks, drives authorize + capture pairs for a fixed time with each candidate client:

- `httpx`    httpx.AsyncClient, pool limited to N connections (the client until this benchmark);
- `aiohttp`  aiohttp.ClientSession, TCPConnector(limit=N);
- `mini`     a minimal keep-alive HTTP/1.1 client on an asyncio Protocol (below; ~80 lines:
             Content-Length bodies, keep-alive pool of N, total and connect timeouts);
- `provider` the gateway's own `SimulatorProvider` (whatever client it uses now), to check that
             the adapter adds nothing to the library it wraps.

Every candidate does the same work per call: orjson-encode the body, POST it with an
`Idempotency-Key`, check the status, orjson-decode the answer. For each candidate and
concurrency it prints calls/s (HTTP requests, two per pair), p50/p99 latency of a call, and the
CPU seconds the client process used per 1,000 calls (`time.process_time`), each the median of
`--repeat` runs (candidates interleaved within a round, so drift hits them alike), and the
ratios against httpx. The CPU figure is what matters most on the gateway: its workers share two
cores with everything else, so client CPU per call is taken from the buyers' requests.

Run: .venv/bin/python bench/bench_provider_client.py [--seconds 5] [--concurrency 64,200]
     [--repeat 3] [--clients httpx,aiohttp,mini,provider] [--loop uvloop|asyncio] [--sim-workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.providers.simulator import start_simulator_process  # noqa: E402
from gateway.stack.embedded import stop_process  # noqa: E402

TIMEOUT_S, CONNECT_TIMEOUT_S = 2.0, 0.5
HEADERS = {"Content-Type": "application/json"}


# --- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------

class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: one request in flight, answer framed by Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: tuple[int, dict[str, str], int] | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the stream cannot be trusted
            self.closed = True
            return
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line, *lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:  # not needed by this provider: refuse rather than misread
                self.closed = True
                waiter.set_exception(ConnectionError("unsupported transfer-encoding"))
                return
            self.head = (int(status_line.split(" ", 2)[1]), headers, int(headers.get("content-length", "0")))
        status, headers, length = self.head
        if len(self.buf) >= length:
            body = bytes(self.buf[:length])
            del self.buf[:length]
            self.head = None
            waiter.set_result((status, headers, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection lost"))


class MiniClient:
    """Pool of at most `limit` keep-alive connections to one host; total and connect timeouts."""

    def __init__(self, base_url: str, *, limit: int, timeout_s: float, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.host_header = f"Host: {parts.netloc}\r\n".encode()
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.slots = asyncio.Semaphore(limit)
        self.idle: deque[_Conn] = deque()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        head = [f"POST {path} HTTP/1.1\r\n".encode(), self.host_header,
                f"Content-Length: {len(body)}\r\n".encode()]
        head += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
        data = b"".join(head) + b"\r\n" + body
        async with self.slots, asyncio.timeout(self.timeout_s):
            conn = None
            while self.idle and conn is None:
                candidate = self.idle.pop()
                conn = None if candidate.closed else candidate
            if conn is None:
                async with asyncio.timeout(self.connect_timeout_s):
                    _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
            reusable = False
            try:
                conn.waiter = asyncio.get_running_loop().create_future()
                assert conn.transport is not None
                conn.transport.write(data)
                result = await conn.waiter
                reusable = result[1].get("connection", "").lower() != "close"
                return result
            finally:
                conn.waiter = None
                if reusable and not conn.closed:
                    self.idle.append(conn)
                elif conn.transport is not None:
                    conn.transport.close()  # cancelled or failed mid-request: the stream is unusable

    async def aclose(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.transport.close()


# --- the candidates: same work per call -----------------------------------------------------------

Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def _check(status: int, content: bytes) -> dict[str, Any]:
    if status >= 400:
        raise RuntimeError(f"http {status}")
    return orjson.loads(content)


async def make_httpx(url: str, n: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                               limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))

    async def call(path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post(path, content=orjson.dumps(body), headers={**HEADERS, "Idempotency-Key": key})
        return _check(resp.status_code, resp.content)

    return call, client.aclose


async def make_httpx_sniffio(url: str, n: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """httpx as it runs when `sniffio` is importable. httpcore 1.0.x runs `import sniffio` each time it
    sets up a lock; anyio 4.x no longer depends on sniffio, so in an environment without it every
    one of those imports fails anew after a search of sys.path (~15 per call, most of httpx's cost at
    low concurrency). This candidate puts a stand-in module in place for its run only."""
    import importlib.util
    import types

    shim = None
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        shim = types.ModuleType("sniffio")
        shim.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = shim
    call, close = await make_httpx(url, n)

    async def close_all() -> None:
        await close()
        if shim is not None and sys.modules.get("sniffio") is shim:
            del sys.modules["sniffio"]

    return call, close_all


async def make_aiohttp(url: str, n: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=n),
                                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S, connect=CONNECT_TIMEOUT_S))

    async def call(path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        async with session.post(path, data=orjson.dumps(body), headers={**HEADERS, "Idempotency-Key": key}) as resp:
            return _check(resp.status, await resp.read())

    return call, session.close


async def make_mini(url: str, n: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = MiniClient(url, limit=n, timeout_s=TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S)

    async def call(path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        status, _, content = await client.post(path, orjson.dumps(body), {**HEADERS, "Idempotency-Key": key})
        return _check(status, content)

    return call, client.aclose


async def make_provider(url: str, n: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from gateway.providers.payments import SimulatorProvider

    provider = SimulatorProvider(url, timeout_s=TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S, max_connections=n)

    async def call(path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/authorize"):
            r = await provider.authorize(idempotency_key=key, amount_minor=body["amount_minor"],
                                         currency=body["currency"], reference=body["reference"])
        else:
            r = await provider.capture(idempotency_key=key, payment_id=path.split("/")[3],
                                       amount_minor=body["amount_minor"])
        return {"id": r.payment_id, "status": r.status}

    return call, provider.aclose


CANDIDATES = {"httpx": make_httpx, "httpx-sniffio": make_httpx_sniffio, "aiohttp": make_aiohttp, "mini": make_mini, "provider": make_provider}


# --- the driver ----------------------------------------------------------------------------------

async def drive(make: Callable[..., Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]], url: str,
                concurrency: int, seconds: float, warmup: float, tag: str) -> dict[str, float]:
    call, close = await make(url, concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"measuring": False, "stop": False}
    counter = 0

    async def one(path: str, key: str, body: dict[str, Any]) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            data = await call(path, key, body)
        except Exception as exc:  # noqa: BLE001 - counted and shown, never hidden
            name = f"{type(exc).__name__}: {exc}"[:80]
            errors[name] = errors.get(name, 0) + 1
            return None
        if state["measuring"]:
            latencies.append(time.perf_counter() - started)
        return data

    async def worker(w: int) -> None:
        nonlocal counter
        while not state["stop"]:
            counter += 1
            key = f"{tag}-{w}-{counter}"
            auth = await one("/v1/payments/authorize", "a" + key,
                             {"amount_minor": 4200, "currency": "EUR", "reference": "bench-" + key})
            if auth is not None and not state["stop"]:
                await one(f"/v1/payments/{auth['id']}/capture", "c" + key, {"amount_minor": 4200})

    try:
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)  # connections opened, caches warm
        errors.clear()
        state["measuring"] = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.perf_counter()
        state["measuring"] = False
        done = len(latencies)
        state["stop"] = True
        await asyncio.gather(*tasks)
    finally:
        await close()
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {"calls_s": done / (t1 - t0), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "cpu_s_per_1000": (cpu1 - cpu0) / done * 1000 if done else float("nan"),
            "errors": sum(errors.values()), "error_kinds": errors}


def run_once(loop_kind: str, *args: Any) -> dict[str, float]:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(drive(*args))
    return asyncio.run(drive(*args))


def start_simulator(workers: int | None) -> tuple[Any, str]:
    """Call start_simulator_process with only the arguments its signature has."""
    params = inspect.signature(start_simulator_process).parameters
    kwargs: dict[str, Any] = {}
    if workers and "workers" in params:
        kwargs["workers"] = workers
        if workers > 1 and "redis_url" in params:  # several workers share payments through Redis
            kwargs["redis_url"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    elif workers and workers > 1:
        print("note: start_simulator_process has no `workers` argument; one worker used", file=sys.stderr)
    return start_simulator_process(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each run")
    parser.add_argument("--concurrency", default="64,200", help="comma-separated task counts (= pool size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per candidate and concurrency (median)")
    parser.add_argument("--clients", default="httpx,httpx-sniffio,aiohttp,mini,provider", help=f"subset of {','.join(CANDIDATES)}")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the client process (the gateway's workers run uvloop)")
    parser.add_argument("--sim-workers", type=int, default=None,
                        help="simulator worker processes, if start_simulator_process supports it")
    args = parser.parse_args()
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(clients) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown clients: {sorted(unknown)}")
    levels = [int(c) for c in args.concurrency.split(",")]

    proc, url = start_simulator(args.sim_workers)
    print(f"simulator {url}; client loop {args.loop}; {args.seconds:g} s per run (+{args.warmup:g} s warm-up), "
          f"{args.repeat} runs; {os.cpu_count()} cores shared by simulator and client")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with httpx.Client(base_url=url, timeout=10) as control:
            for n in levels:
                for rep in range(args.repeat):
                    order = clients[rep % len(clients):] + clients[:rep % len(clients)]  # rotate who goes first
                    for name in order:
                        control.post("/_reset").raise_for_status()  # keep the simulator's memory flat
                        r = run_once(args.loop, CANDIDATES[name], url, n, args.seconds, args.warmup,
                                     f"{name}{n}r{rep}")
                        results.setdefault((name, n), []).append(r)
                        extra = f"  errors {r['errors']} {r['error_kinds']}" if r["errors"] else ""
                        print(f"  c={n:<4} run {rep + 1} {name:<13} {r['calls_s']:8.0f} calls/s  "
                              f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                              f"CPU {r['cpu_s_per_1000']:.3f} s/1000 calls{extra}", flush=True)
    finally:
        stop_process(proc)

    print("\nmedians (ratios vs httpx: throughput ×, CPU per call ×)")
    print(f"| concurrency | client | calls/s | p50 ms | p99 ms | client CPU s / 1,000 calls | calls/s vs httpx "
          f"| CPU/call vs httpx | runs (calls/s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in levels:
        med = {name: {k: statistics.median(r[k] for r in results[(name, n)])
                      for k in ("calls_s", "p50_ms", "p99_ms", "cpu_s_per_1000")} for name in clients}
        base = med.get("httpx")
        for name in clients:
            m = med[name]
            rt = f"{m['calls_s'] / base['calls_s']:.2f}×" if base else "–"
            rc = f"{m['cpu_s_per_1000'] / base['cpu_s_per_1000']:.2f}×" if base else "–"
            runs = " · ".join(f"{r['calls_s']:.0f}" for r in results[(name, n)])
            print(f"| {n} | {name} | {m['calls_s']:,.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} "
                  f"| {m['cpu_s_per_1000']:.3f} | {rt} | {rc} | {runs} |")
    errs = sum(r["errors"] for rs in results.values() for r in rs)
    if errs:
        print(f"\nWARNING: {errs} failed calls during measured windows (see the runs above)")


if __name__ == "__main__":
    main()
