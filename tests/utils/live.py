"""Real processes for tests over real HTTP: the gateway and workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.core.config import Settings
from gateway.stack.embedded import free_port, spawn, stop_process, wait_ready

# Sybil protections (docs/waiting-room.md) a spawned gateway takes from the settings object.
SYBIL_SETTINGS = ("buyer_token_per_ip_per_s", "buyer_token_per_ip_burst", "buyer_token_per_prefix_per_s",
                  "buyer_token_per_prefix_burst", "holds_per_address_factor", "queue_pow", "queue_pow_bits")


def stack_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": settings.redis_url or "", "DATABASE_URL": settings.database_url or "",
            "FLASHGATE_REDIS_PREFIX": settings.redis_prefix, "FLASHGATE_SECRET_KEY": settings.secret_key or "",
            "FLASHGATE_ENVIRONMENT": settings.environment, "FLASHGATE_DATA_DIR": str(settings.data_dir),
            **{f"FLASHGATE_{name.upper()}": str(getattr(settings, name)) for name in SYBIL_SETTINGS}}


@contextlib.contextmanager
def start_gateway(settings: Settings, log_dir: Path, workers: int = 2) -> Iterator[str]:
    port = free_port()
    log = log_dir / f"gateway-{port}.log"
    proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
                 log=log, env=stack_env(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 30, proc=proc, log=log)
        yield url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def start_worker(settings: Settings, name: str, log_dir: Path) -> Iterator[subprocess.Popen]:
    proc = spawn([sys.executable, "-m", "gateway.cli", "worker", name], log=log_dir / f"worker-{name}.log",
                 env=stack_env(settings))
    try:
        yield proc
    finally:
        stop_process(proc)
