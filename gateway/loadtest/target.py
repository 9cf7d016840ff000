"""The platform a load test runs against: a private `flashgate up` of its own (the default), or an
explicit URL.

The private platform is the whole local stack (private Redis and Postgres under the run's
directory, 2 gateway workers, the ledger and admission workers, the payment simulator), started
with the load generator on this machine trusted as a proxy, because every virtual user names its
own address in `X-Forwarded-For` (`loadtest/lib/buyer.js`): without that all buyers would share
127.0.0.1 and the per-address limits would apply to all of them together.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.stack.embedded import wait_ready


@dataclass
class Target:
    base_url: str
    api_key: str
    payments_url: str | None      # the simulator's control URL (PUT /_config), when known
    data_dir: Path | None = None  # a private platform's data directory
    proc: subprocess.Popen | None = None

    @property
    def private(self) -> bool:
        return self.proc is not None


def start_private(data_dir: Path, *, workers: int = 2, timeout_s: float = 240.0) -> Target:
    """`flashgate up --demo` in `data_dir`; returns once it printed its URLs (stack.json)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLASHGATE_DATA_DIR": str(data_dir), "FLASHGATE_TRUSTED_PROXIES": "127.0.0.1/32"}
    for name in ("REDIS_URL", "DATABASE_URL", "FLASHGATE_PAYMENTS_URL"):
        env.pop(name, None)  # a platform of its own: private servers and the bundled simulator
    log = open(data_dir / "up.log", "wb")
    from gateway.stack.embedded import free_port

    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--demo", "--port", str(free_port()),
                             "--workers", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stack_file = data_dir / "stack.json"
    deadline = time.monotonic() + timeout_s
    while not stack_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_private(proc)
            tail = (data_dir / "up.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the local platform did not start (log: {data_dir / 'up.log'}):\n{tail}")
        time.sleep(0.3)
    info = json.loads(stack_file.read_text())
    wait_ready(info["gateway_url"], deadline, interval=0.3)
    return Target(info["gateway_url"], info["demo"]["api_key"], info.get("payments_url"), data_dir, proc)


def stop_private(proc: subprocess.Popen) -> None:
    """Ctrl-C to the platform's process group (it stops its children), then SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def explicit(url: str, api_key: str | None, payments_url: str | None) -> Target:
    if not api_key:
        raise SystemExit("flashgate loadtest: --target needs an organiser key with the admin role "
                         "(--api-key or FLASHGATE_API_KEY) to seed the event")
    wait_ready(url.rstrip("/"), time.monotonic() + 10, interval=0.3)
    return Target(url.rstrip("/"), api_key, payments_url)
