"""Helpers of the process, Postgres and payment-provider fault tests: buyers over real HTTP,
the audit run as an operator runs it, and process lookups by command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.stack.embedded import free_port
from tests.utils.factories import auth


def audit(env: dict[str, str], event_id: int) -> subprocess.CompletedProcess:
    """`flashgate audit EVENT` against the servers named in `env`."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", str(event_id)], env=env,
                          capture_output=True, text=True, timeout=120)


async def wait_audit_clean(env: dict[str, str], event_id: int, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """The audit, run until it passes (the ledger drains meanwhile) or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(audit, env, event_id)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


async def buy(client: httpx.AsyncClient, event_id: int, key: str, *, tries: int = 20, address: str = "") -> dict:
    """One buyer: token, a hold of one GA ticket, checkout; retries the checkout with the same
    Idempotency-Key on a connection error or a 503, as the buyer page does. `address` is sent as
    X-Forwarded-For (a gateway trusting loopback as its proxy then sees one address per buyer).
    Returns `{"status", "body", "key", "hold_id", "buyer", "attempts"}` of the last answer (status 0: no
    answer); `attempts` counts the checkout requests sent."""
    forwarded = {"X-Forwarded-For": address} if address else {}
    token = await _retry(lambda: client.post("/v1/buyer-token", headers=forwarded), 201)
    buyer = token.json()["buyer_token"]
    hold = await _retry(lambda: client.post(f"/v1/events/{event_id}/holds", json={"ga": {"floor": 1}},
                                            headers={**auth(buyer), **forwarded}), 201)
    hold_id = hold.json()["hold_id"]
    status, body, attempts = 0, {}, 0
    for _ in range(tries):
        attempts += 1
        try:
            resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={},
                                     headers={**auth(buyer), **forwarded, "Idempotency-Key": key})
        except httpx.TransportError:
            status, body = 0, {}
            await asyncio.sleep(0.3)
            continue
        status, body = resp.status_code, resp.json()
        if status != 503:
            break
        await asyncio.sleep(min(float(resp.headers.get("retry-after", "1")), 2.0))
    return {"status": status, "body": body, "key": key, "hold_id": hold_id, "buyer": buyer, "attempts": attempts}


async def _retry(call: Callable[[], Awaitable[httpx.Response]], expected: int, tries: int = 30) -> httpx.Response:
    """A request before checkout, repeated while the gateway is away (a worker being replaced)."""
    last: httpx.Response | None = None
    for _ in range(tries):
        try:
            last = await call()
        except httpx.TransportError:
            await asyncio.sleep(0.3)
            continue
        if last.status_code == expected:
            return last
        if last.status_code != 503:
            break
        await asyncio.sleep(0.3)
    raise AssertionError(f"expected {expected}, got {last.status_code if last else 'no answer'}: "
                         f"{last.text if last else ''}")


def processes(*needles: str) -> list[int]:
    """Pids of the processes whose command line contains every one of `needles`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles):
            found.append(int(entry.name))
    return sorted(found)


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid` (Linux)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Output:
    """The lines a process prints, read as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        self._thread.join(10)
        self._proc.stdout.close()  # type: ignore[union-attr]

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first line containing `text`, once printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines[-40:]))


@dataclass
class Platform:
    """A `flashgate up` of its own (private Redis, Postgres, simulator) and an organiser key."""

    proc: subprocess.Popen
    out: Output
    env: dict[str, str]
    stack_file: Path
    api_key: str = ""

    @property
    def info(self) -> dict:
        return json.loads(self.stack_file.read_text())


@contextlib.contextmanager
def platform(data_dir: Path, *, workers: int = 1, **settings: str) -> Iterator[Platform]:
    """`flashgate up` in `data_dir`, started as an operator starts it and stopped with Ctrl-C (the stop is
    checked: exit status 0, `stopped` printed, stack.json removed). `settings` are FLASHGATE_ variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("FLASHGATE_")}
    env["FLASHGATE_DATA_DIR"] = str(data_dir / "var")
    env.update({f"FLASHGATE_{name.upper()}": value for name, value in settings.items()})
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--port", str(free_port()),
                             "--workers", str(workers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    up = Platform(proc, Output(proc), env, data_dir / "var" / "stack.json")
    try:
        up.out.wait_for("Flashgate is running.", timeout=120)
        made = subprocess.run([sys.executable, "-m", "gateway.cli", "org", "create", "Chaos Org", "--json"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        up.api_key = json.loads(made.stdout)["api_key"]
        yield up
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        up.out.close()
    assert proc.returncode == 0, "\n".join(up.out.lines)
    assert "stopped" in up.out.lines[-1]
    assert not up.stack_file.exists()
