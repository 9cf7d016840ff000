"""A card-payment provider simulator: a real HTTP server for the local stack and the tests.

Run it with `python -m gateway.providers.simulator --port 8099 [--latency-ms N]
[--decline-rate F] [--failure-rate F]` (granian, one worker, state in memory), or
from Python with `start_simulator_process()`.

Behaviour (see docs/providers.md):
- `reference` containing `decline` is always declined; containing `fail` always
  answers 503 (deterministic faults for tests); otherwise `decline_rate` and
  `failure_rate` draw at random.
- `down: true` answers every API call 503 at once, before any latency: an outage
  that fails fast. (A provider that hangs is `latency_ms` above the caller's timeout.)
- The same `Idempotency-Key` (per operation) always returns the same answer;
  failures (503) are not remembered, so a retry with the same key may succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ENV_PREFIX = "FLASHGATE_SIMULATOR_"


@dataclass
class SimConfig:
    latency_ms: float = 0.0
    decline_rate: float = 0.0
    failure_rate: float = 0.0
    down: bool = False

    @classmethod
    def from_env(cls) -> "SimConfig":
        def num(name: str) -> float:
            return float(os.environ.get(ENV_PREFIX + name.upper(), "0") or 0)

        return cls(latency_ms=num("latency_ms"), decline_rate=num("decline_rate"),
                   failure_rate=num("failure_rate"),
                   down=os.environ.get(ENV_PREFIX + "DOWN", "") in ("1", "true"))

    def update(self, values: dict[str, Any]) -> None:
        for name in ("latency_ms", "decline_rate", "failure_rate"):
            if name in values:
                value = float(values[name])
                if value < 0 or (name != "latency_ms" and value > 1):
                    raise ValueError(f"{name} out of range")
                setattr(self, name, value)
        if "down" in values:
            self.down = bool(values["down"])


@dataclass
class Payment:
    id: str
    status: str
    amount_minor: int
    currency: str
    reference: str
    captured_minor: int = 0
    refunded_minor: int = 0
    refunds: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "amount_minor": self.amount_minor,
                "currency": self.currency, "reference": self.reference,
                "captured_minor": self.captured_minor, "refunded_minor": self.refunded_minor}


class Simulator:
    """In-memory provider state; one instance per server process."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.reset()

    def reset(self) -> None:
        self.payments: dict[str, Payment] = {}
        # (operation, idempotency key) -> (request fingerprint, status, body)
        self.answers: dict[tuple[str, str], tuple[bytes, int, dict[str, Any]]] = {}
        self.stats: Counter[str] = Counter()

    def roll(self, rate: float) -> bool:
        return rate > 0 and random.random() < rate


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str) -> Response:
    return _json(status, {"error": {"code": code, "message": message}})


def create_app(config: SimConfig | None = None) -> Starlette:
    sim = Simulator(config)

    async def read_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    async def guarded(request: Request, kind: str, handler: Any) -> Response:
        """Common path of the API calls: count, outage, latency, failure, idempotency."""
        sim.stats[kind] += 1
        cfg = sim.config
        if cfg.down:
            sim.stats["refused_down"] += 1
            return _error(503, "down", "provider is down")
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        try:
            body = await read_json(request)
        except ValueError:
            return _error(400, "malformed_json", "body must be a JSON object")
        key = request.headers.get("idempotency-key")
        if kind != "get" and not key:
            return _error(400, "idempotency_key_required", "Idempotency-Key header is required")
        fingerprint = orjson.dumps([request.url.path, body], option=orjson.OPT_SORT_KEYS)
        if key is not None and (kind, key) in sim.answers:
            seen, status, answer = sim.answers[(kind, key)]
            if seen != fingerprint:
                return _error(422, "idempotency_conflict", "Idempotency-Key reused with another request")
            sim.stats["replayed"] += 1
            return _json(status, answer, {"Idempotent-Replayed": "true"})
        if "fail" in str(body.get("reference", "")) or sim.roll(cfg.failure_rate):
            sim.stats["failed"] += 1
            return _error(503, "temporarily_unavailable", "simulated failure")
        try:
            status, answer = handler(request, body)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, "bad_request", f"invalid request: {exc}")
        if key is not None and status < 500:
            sim.answers[(kind, key)] = (fingerprint, status, answer)
        return _json(status, answer)

    def do_authorize(request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = int(body["amount_minor"])
        currency = str(body["currency"])
        reference = str(body.get("reference", ""))
        if amount <= 0 or len(currency) != 3:
            raise ValueError("amount_minor must be positive and currency three letters")
        declined = "decline" in reference or sim.roll(sim.config.decline_rate)
        payment = Payment(id="pay_" + uuid.uuid4().hex[:20], status="declined" if declined else "authorized",
                          amount_minor=amount, currency=currency, reference=reference)
        sim.payments[payment.id] = payment
        sim.stats["declined" if declined else "authorized"] += 1
        return 201, {"id": payment.id, "status": payment.status, "amount_minor": amount, "currency": currency}

    def do_capture(request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = sim.payments.get(request.path_params["payment_id"])
        if payment is None:
            return 404, {"error": {"code": "not_found", "message": "no such payment"}}
        amount = int(body.get("amount_minor") or payment.amount_minor)
        if payment.status != "authorized" or not 0 < amount <= payment.amount_minor:
            return 409, {"error": {"code": "invalid_state", "message": f"cannot capture a {payment.status} payment"}}
        payment.status, payment.captured_minor = "captured", amount
        return 200, {"id": payment.id, "status": "captured", "amount_minor": amount, "currency": payment.currency}

    def do_refund(request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = sim.payments.get(request.path_params["payment_id"])
        if payment is None:
            return 404, {"error": {"code": "not_found", "message": "no such payment"}}
        amount = int(body.get("amount_minor") or payment.captured_minor - payment.refunded_minor)
        left = payment.captured_minor - payment.refunded_minor
        if payment.status not in ("captured", "refunded") or not 0 < amount <= left:
            return 409, {"error": {"code": "invalid_state", "message": "nothing to refund"}}
        refund_id = "re_" + uuid.uuid4().hex[:20]
        payment.refunded_minor += amount
        payment.refunds.append(refund_id)
        if payment.refunded_minor == payment.captured_minor:
            payment.status = "refunded"
        return 200, {"id": payment.id, "refund_id": refund_id, "status": "refunded", "amount_minor": amount,
                     "currency": payment.currency}

    def do_get(request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = sim.payments.get(request.path_params["payment_id"])
        if payment is None:
            return 404, {"error": {"code": "not_found", "message": "no such payment"}}
        return 200, payment.public()

    async def authorize(request: Request) -> Response:
        return await guarded(request, "authorize", do_authorize)

    async def capture(request: Request) -> Response:
        return await guarded(request, "capture", do_capture)

    async def refund(request: Request) -> Response:
        return await guarded(request, "refund", do_refund)

    async def get_payment(request: Request) -> Response:
        return await guarded(request, "get", do_get)

    async def config(request: Request) -> Response:
        if request.method == "PUT":
            try:
                sim.config.update(await read_json(request))
            except (ValueError, TypeError) as exc:
                return _error(400, "bad_request", str(exc))
        return _json(200, asdict(sim.config))

    async def stats(request: Request) -> Response:
        return _json(200, dict(sim.stats))

    async def reset(request: Request) -> Response:
        sim.reset()
        sim.config = SimConfig()
        return _json(200, {"reset": True})

    routes = [
        Route("/v1/payments/authorize", authorize, methods=["POST"]),
        Route("/v1/payments/{payment_id}/capture", capture, methods=["POST"]),
        Route("/v1/payments/{payment_id}/refund", refund, methods=["POST"]),
        Route("/v1/payments/{payment_id}", get_payment, methods=["GET"]),
        Route("/_config", config, methods=["GET", "PUT"]),
        Route("/_stats", stats, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app


def app_from_env() -> Starlette:
    """granian's factory target: configuration arrives in FLASHGATE_SIMULATOR_* variables."""
    return create_app(SimConfig.from_env())


def _free_port() -> int:
    from gateway.stack.embedded import free_port

    return free_port()


def start_simulator_process(port: int | None = None, *, host: str = "127.0.0.1", log: Path | None = None,
                            timeout: float = 20.0, **config: float | bool) -> tuple[subprocess.Popen, str]:
    """Start the simulator as a child process and wait until it answers; returns (process, base URL).

    `config` takes SimConfig fields (latency_ms, decline_rate, failure_rate, down).
    Stop it with `gateway.stack.embedded.stop_process(proc)`.
    """
    from gateway.stack.embedded import ServerFailed, spawn, stop_process

    port = port or _free_port()
    unknown = set(config) - set(SimConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown simulator settings: {sorted(unknown)}")
    env = {**os.environ}
    for name, value in config.items():
        env[ENV_PREFIX + name.upper()] = "1" if value is True else "0" if value is False else str(value)
    proc = spawn([sys.executable, "-m", "gateway.providers.simulator", "--port", str(port), "--host", host,
                  "--from-env"], log=log, env=env)
    base_url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"payment simulator exited with status {proc.returncode}")
        try:
            if httpx.get(base_url + "/_config", timeout=0.5).status_code == 200:
                return proc, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise ServerFailed(f"payment simulator did not answer on {base_url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.providers.simulator",
                                     description="Payment-provider simulator (HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--decline-rate", type=float)
    parser.add_argument("--failure-rate", type=float)
    parser.add_argument("--from-env", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("latency_ms", "decline_rate", "failure_rate"):
        value = getattr(args, name)
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)

    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian("gateway.providers.simulator:app_from_env", address=args.host, port=args.port,
            interface=Interfaces.ASGI, workers=1, factory=True, log_level=LogLevels.warning, loop="uvloop").serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
