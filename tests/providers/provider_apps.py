"""A tiny real payment provider for pacing tests, served by granian in a child process.

It speaks the part of the simulator's API that `SimulatorProvider` uses
(`POST /v1/payments/authorize|{id}/capture|{id}/refund`) and models two things the
simulator does not (or not deterministically):

- a finite **capacity**: `capacity` calls are served at once, each taking `service_ms`;
  the others queue inside the provider, so latency grows with the offered concurrency
  (a provider that is slower than the offered load);
- a **rate limit**: `rate_limit_per_s` > 0 answers 429 with `Retry-After: 1` beyond that
  many calls per second (token bucket, burst one second); `always_429` answers 429 to all.

Control: `PUT /_config` (any subset of the fields above), `GET /_stats`
(`calls`, `answered`, `throttled`, `max_in_service`, `max_waiting`), `POST /_reset`.

Start it with `start_provider_app(**config)` -> (process, url); stop it with
`gateway.stack.embedded.stop_process(process)`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {"capacity": 0, "service_ms": 0.0, "rate_limit_per_s": 0.0, "always_429": False}


def create_app() -> Starlette:
    config: dict[str, Any] = dict(DEFAULTS)
    stats: dict[str, int] = {}
    state: dict[str, Any] = {}

    def reset() -> None:
        config.clear()
        config.update(DEFAULTS)
        stats.clear()
        stats.update(calls=0, answered=0, throttled=0, max_in_service=0, max_waiting=0)
        state.update(sem=None, in_service=0, waiting=0, tokens=0.0, refill_at=time.monotonic())

    reset()

    def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)

    def throttled() -> bool:
        if config["always_429"]:
            return True
        rate = float(config["rate_limit_per_s"])
        if rate <= 0:
            return False
        now = time.monotonic()
        state["tokens"] = min(rate, state["tokens"] + (now - state["refill_at"]) * rate)
        state["refill_at"] = now
        if state["tokens"] >= 1:
            state["tokens"] -= 1
            return False
        return True

    async def serve(request: Request, status: str, payment_id: str | None = None) -> Response:
        stats["calls"] += 1
        if throttled():
            stats["throttled"] += 1
            return json({"error": {"code": "rate_limited", "message": "too many requests"}}, 429,
                        {"Retry-After": "1"})
        body = orjson.loads(await request.body() or b"{}")
        sem: asyncio.Semaphore | None = state["sem"]
        if sem is None and config["capacity"]:
            sem = state["sem"] = asyncio.Semaphore(int(config["capacity"]))
        state["waiting"] += 1
        stats["max_waiting"] = max(stats["max_waiting"], state["waiting"])
        try:
            if sem is not None:
                await sem.acquire()
        finally:
            state["waiting"] -= 1
        state["in_service"] += 1
        stats["max_in_service"] = max(stats["max_in_service"], state["in_service"])
        try:
            if config["service_ms"]:
                await asyncio.sleep(float(config["service_ms"]) / 1000)
        finally:
            state["in_service"] -= 1
            if sem is not None:
                sem.release()
        stats["answered"] += 1
        out = {"id": payment_id or uuid.uuid4().hex, "status": status,
               "amount_minor": int(body.get("amount_minor", 0)), "currency": body.get("currency", "EUR")}
        if status == "refunded":
            out["refund_id"] = uuid.uuid4().hex
        return json(out, 201 if status == "authorized" else 200)

    async def authorize(request: Request) -> Response:
        return await serve(request, "authorized")

    async def capture(request: Request) -> Response:
        return await serve(request, "captured", request.path_params["pid"])

    async def refund(request: Request) -> Response:
        return await serve(request, "refunded", request.path_params["pid"])

    async def put_config(request: Request) -> Response:
        update = orjson.loads(await request.body() or b"{}")
        unknown = set(update) - set(DEFAULTS)
        if unknown:
            return json({"error": {"code": "unknown", "message": str(sorted(unknown))}}, 422)
        config.update(update)
        state["sem"] = None  # a new capacity applies to calls arriving from now on
        state["tokens"], state["refill_at"] = float(config["rate_limit_per_s"]), time.monotonic()
        return json(config)

    async def get_config(request: Request) -> Response:
        return json(config)

    async def get_stats(request: Request) -> Response:
        return json(stats)

    async def post_reset(request: Request) -> Response:
        reset()
        return json({"ok": True})

    return Starlette(routes=[
        Route("/v1/payments/authorize", authorize, methods=["POST"]),
        Route("/v1/payments/{pid}/capture", capture, methods=["POST"]),
        Route("/v1/payments/{pid}/refund", refund, methods=["POST"]),
        Route("/_config", put_config, methods=["PUT"]),
        Route("/_config", get_config, methods=["GET"]),
        Route("/_stats", get_stats, methods=["GET"]),
        Route("/_reset", post_reset, methods=["POST"]),
    ])


def start_provider_app(**config: Any):
    """Start the app under granian (one worker) in a child process; returns (process, base URL)."""
    import httpx

    from gateway.stack.embedded import ServerFailed, free_port, spawn, stop_process

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = spawn([sys.executable, "-m", "tests.providers.provider_apps", "--port", str(port)], env=env, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"test provider exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/_config", timeout=0.5).status_code == 200:
                if config:
                    httpx.put(url + "/_config", json=config, timeout=5).raise_for_status()
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise ServerFailed(f"test provider did not answer on {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian("tests.providers.provider_apps:create_app", address="127.0.0.1", port=args.port,
            interface=Interfaces.ASGI, workers=1, factory=True, log_level=LogLevels.warning,
            log_access=False).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
