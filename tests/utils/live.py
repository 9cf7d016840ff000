"""Real processes for tests over real HTTP: the gateway and workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from gateway.core.config import Settings
from gateway.stack.embedded import free_port, spawn, stop_process


def stack_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": settings.redis_url or "", "DATABASE_URL": settings.database_url or "",
            "FLASHGATE_REDIS_PREFIX": settings.redis_prefix, "FLASHGATE_SECRET_KEY": settings.secret_key or "",
            "FLASHGATE_ENVIRONMENT": settings.environment, "FLASHGATE_DATA_DIR": str(settings.data_dir)}


@contextlib.contextmanager
def start_gateway(settings: Settings, log_dir: Path, workers: int = 2) -> Iterator[str]:
    port = free_port()
    log = log_dir / f"gateway-{port}.log"
    proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
                 log=log, env=stack_env(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
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
