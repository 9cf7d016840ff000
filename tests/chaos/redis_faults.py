"""Helpers of the Redis fault tests: a private redis-server under a real gateway (2 granian
workers) and the ledger, expiry and admission workers, buyers through the waiting room over real
HTTP, and the audit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.organisers.audit import Report, audit_event
from gateway.stack.embedded import RedisServer
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import start_gateway, start_worker
from tests.utils.servers import run_async


@dataclass
class Stack:
    redis: RedisServer
    settings: Settings
    url: str
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    log_dir: Path = Path(".")


@contextlib.contextmanager
def redis_stack(settings: Settings, tmp_path: Path, *, fsync: str = "always",
                workers: tuple[str, ...] = ("ledger", "expiry", "admission")) -> Iterator[Stack]:
    """A persistent private redis-server (append-only file, `appendfsync` as given) and the
    platform's processes on it. The server is resumed and stopped at the end whatever happened."""
    server = RedisServer(tmp_path / "redis", persistent=True, extra_args=["--appendfsync", fsync]).start()
    local = settings.model_copy(update={"redis_url": server.url, "redis_prefix": "chaos",
                                        "data_dir": tmp_path / "data"})
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(start_gateway(local, tmp_path, workers=2))
            procs = {name: stack.enter_context(start_worker(local, name, tmp_path)) for name in workers}
            yield Stack(server, local, url, procs, tmp_path)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def fresh(url: str, timeout: float = 10) -> httpx.Client:
    """A client that opens a new connection per request, so requests spread over both workers."""
    return httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


def worker_of(resp: httpx.Response) -> str:
    return resp.headers["x-request-id"][:8]  # request ids start with a per-worker prefix


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


def until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:.0f} s"
        time.sleep(interval)


def queue_event(c: httpx.Client, database_url: str, **spec: Any) -> dict[str, Any]:
    """An open queue-mode event (admission 100/s); its `api_key` is added."""
    _, key = run_async(new_org, database_url, "Chaos Redis")
    resp = c.post("/v1/events", json=seat_spec(queue=True, **spec), headers=auth(key))
    assert resp.status_code == 201, resp.text
    event = resp.json()
    assert c.post(f"/v1/events/{event['id']}/open", headers=auth(key)).status_code == 200
    event["api_key"] = key
    return event


def admitted_buyer(c: httpx.Client, event_id: int, timeout: float = 30) -> dict[str, str]:
    """A buyer who joined the waiting room and was admitted: headers for holds."""
    token = c.post("/v1/buyer-token")
    assert token.status_code == 201, token.text
    buyer = token.json()["buyer_token"]
    joined = c.post(f"/v1/events/{event_id}/queue", headers=auth(buyer))
    assert joined.status_code in (200, 201), joined.text
    body = joined.json()

    def admission() -> str | None:
        nonlocal body
        if body.get("admission_token"):
            return body["admission_token"]
        resp = c.get(f"/v1/events/{event_id}/queue", headers=auth(body.get("queue_token") or ""))
        if resp.status_code == 200:
            body = {**resp.json(), "queue_token": body.get("queue_token")}
        return body.get("admission_token")

    adm = until(admission, timeout, interval=0.6, what="admission")
    return {**auth(buyer), "X-Admission-Token": adm}


def hold(c: httpx.Client, event_id: int, me: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return c.post(f"/v1/events/{event_id}/holds", json=body, headers=me)


def checkout(c: httpx.Client, hold_id: str, me: dict[str, str], key: str, email: str = "fan@example.org"
             ) -> httpx.Response:
    return c.post(f"/v1/holds/{hold_id}/checkout", json={"email": email}, headers={**me, "Idempotency-Key": key})


def buy(c: httpx.Client, event_id: int, me: dict[str, str], body: dict[str, Any], key: str) -> dict[str, Any]:
    h = hold(c, event_id, me, body)
    assert h.status_code == 201, h.text
    order = checkout(c, h.json()["hold_id"], me, key)
    assert order.status_code == 201, order.text
    return order.json()


def metric(url: str, name: str) -> float | None:
    """One unlabelled sample of the gateway's `/metrics` (None when absent)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def run_audit(settings: Settings, event_id: int) -> Report:
    async def go() -> Report:
        runtime = Runtime.from_settings(settings)
        try:
            return await audit_event(redis=runtime.redis, pool=await runtime.pg(), prefix=runtime.prefix,
                                     event_id=event_id, scripts=runtime.scripts)
        finally:
            await runtime.close()

    return asyncio.run(go())


def failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def audit_clean(settings: Settings, event_id: int, timeout: float = 60) -> Report:
    """The audit, run until it passes (the ledger drains meanwhile); the last report otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        report = run_audit(settings, event_id)
        if report.ok or time.monotonic() > deadline:
            return report
        time.sleep(0.5)
