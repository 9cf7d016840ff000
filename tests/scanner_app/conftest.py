"""The door at a real gateway: a gateway that a test can stop and start again on the same address, and a
pseudo-terminal driver for the terminal client."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import Settings
from gateway.stack.embedded import free_port, spawn, stop_process
from tests.utils.live import stack_env

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Gateway:
    """A gateway (granian, 1 worker) on a fixed port: `stop()` and `start()` again at the same URL."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_dir / f"door-gateway-{self.port}.log"
        self.proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--workers", "1"],
                          log=log, env=stack_env(self.settings))
        deadline = time.monotonic() + 40
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # nothing may answer at this address any more
            try:
                httpx.get(self.url + "/healthz", timeout=0.3)
            except httpx.HTTPError:
                return
            time.sleep(0.1)
        raise RuntimeError("the gateway still answers after being stopped")


@pytest.fixture(scope="module")
def gateway_process(settings: Settings, tmp_root: Path, payment_simulator: str) -> Iterator[Gateway]:
    gw = Gateway(settings, tmp_root)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gateway(gateway_process: Gateway) -> Gateway:
    """The module's gateway, running (a test that failed while it was stopped does not break the next)."""
    if gateway_process.proc is None:
        gateway_process.start()
    return gateway_process


class Terminal:
    """`python -m scanner_app` on a pseudo-terminal: what a keyboard-wedge scanner types, what staff see."""

    def __init__(self, args: list[str], *, cwd: Path = ROOT) -> None:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 100, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        env.pop("FLASHGATE_DEVICE_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "scanner_app", *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=cwd, env=env, start_new_session=True, close_fds=True)
        os.close(slave)
        self.fd = master
        self.raw = ""   # everything the terminal showed, with colour codes
        self.pos = 0    # how far `expect` has read (in the text without colour codes)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal
            return False
        if not chunk:
            return False
        self.raw += chunk.decode("utf-8", "replace")
        return True

    def type(self, line: str) -> None:
        """What a wedge scanner does: the code, then Enter."""
        os.write(self.fd, (line + "\r").encode())

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen within {timeout}s; the terminal showed after the last "
                                     f"match:\n{self.text[self.pos:][-3000:]}")
            self._read(min(0.2, max(0.0, deadline - time.monotonic())))

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05):
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[Any]:
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        t = Terminal(list(args))
        opened.append(t)
        return t

    yield open_terminal
    for t in opened:
        t.close()
