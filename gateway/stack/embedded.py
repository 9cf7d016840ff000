"""Private Redis and Postgres servers started from the binaries on this machine.

Used by `flashgate up` (data under `var/`, kept between runs) and by the test
suite (data in a temporary directory) when `REDIS_URL` / `DATABASE_URL` are not
set. Servers listen on free loopback ports only. A missing binary stops with one
sentence naming it and how to install it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINTS = {
    "redis-server": "install it with `sudo apt-get install redis-server` (Debian/Ubuntu) "
    "or `brew install redis` (macOS)",
    "redis-cli": "install it with `sudo apt-get install redis-tools` (Debian/Ubuntu) "
    "or `brew install redis` (macOS)",
    "initdb": "install it with `sudo apt-get install postgresql` (Debian/Ubuntu) "
    "or `brew install postgresql@16` (macOS)",
    "postgres": "install it with `sudo apt-get install postgresql` (Debian/Ubuntu) "
    "or `brew install postgresql@16` (macOS)",
    "pg_basebackup": "install it with `sudo apt-get install postgresql` (Debian/Ubuntu) "
    "or `brew install postgresql@16` (macOS)",
}

# Debian and Ubuntu keep the Postgres server binaries off PATH.
_EXTRA_DIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/opt/homebrew/bin",
    "/usr/local/pgsql/bin",
)


class MissingBinary(RuntimeError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"`{name}` was not found on PATH or in the usual places; {INSTALL_HINTS[name]}.")


class ServerFailed(RuntimeError):
    pass


def _version_key(path: str) -> tuple[int, ...]:
    digits = [int(part) for part in path.replace("-", "/").split("/") if part.isdigit()]
    return tuple(digits) or (0,)


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates: list[str] = []
    for pattern in _EXTRA_DIRS:
        candidates += [p for p in glob.glob(os.path.join(pattern, name)) if os.access(p, os.X_OK)]
    if not candidates:
        raise MissingBinary(name)
    return sorted(candidates, key=_version_key)[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, deadline: float, *, proc: subprocess.Popen | None = None, log: Path | None = None,
               interval: float = 0.1) -> None:
    """Until `<url>/readyz` answers 200 (a gateway this process started, or any given one). Raises
    RuntimeError, with the tail of `log`, when `proc` exits first or `deadline` (monotonic) passes."""
    import urllib.error
    import urllib.request

    def tail() -> str:
        return log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""

    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the gateway exited ({proc.returncode}) before it was ready\n{tail()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/readyz did not answer 200 in time\n{tail()}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Children get SIGTERM when the supervising process dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args: list[str], *, log: Path | None = None, user: str | None = None,
          env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True, user=user, env=env, cwd=cwd,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def _wait_port(proc: subprocess.Popen, port: int, what: str, log: Path | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ServerFailed(f"{what} exited with status {proc.returncode}:\n{tail}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise ServerFailed(f"{what} did not listen on port {port} within {timeout:.0f} s (log: {log})")


def _wait_loaded(proc: subprocess.Popen, port: int, log: Path | None, timeout: float = 300.0) -> None:
    """A persistent Redis listens before it has loaded its append-only file, answering `LOADING` until
    then: whatever starts next (the payment simulator, the gateway) must find it ready."""
    import redis

    client = redis.Redis(port=port, socket_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                    raise ServerFailed(f"redis-server did not finish loading its data within {timeout:.0f} s:\n{tail}")
                time.sleep(0.1)
            except redis.RedisError:
                return  # it answers, but wants a password or TLS first: nothing more to learn without them
    finally:
        client.close()


@dataclass
class RedisServer:
    """A private redis-server. `persistent` keeps an append-only file in `data_dir`."""

    data_dir: Path
    port: int = 0
    persistent: bool = False
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = find_binary("redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log = self.data_dir / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--protected-mode", "yes", "--daemonize", "no",
                "--appendonly", "yes" if self.persistent else "no", *self.extra_args]
        self.proc = spawn(args, log=log)
        _wait_port(self.proc, self.port, "redis-server", log)
        _wait_loaded(self.proc, self.port, log)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
            self.proc = None


def _unprivileged_user() -> str | None:
    """Postgres refuses to run as root: when we are root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServerFailed("running as root and no `postgres` or `nobody` user exists to run Postgres")


@dataclass
class PostgresServer:
    """A private Postgres cluster (initdb on first start, trust auth, TCP on loopback only)."""

    data_dir: Path
    port: int = 0
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only
    proc: subprocess.Popen | None = None
    user: str = "postgres"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        initdb = find_binary("initdb")
        postgres = os.path.join(os.path.dirname(initdb), "postgres")
        if not os.access(postgres, os.X_OK):
            postgres = find_binary("postgres")
        run_as = _unprivileged_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as:
            info = pwd.getpwnam(run_as)
            # The server's user must reach the data directory through every parent.
            for parent in [self.data_dir, *self.data_dir.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o011)
                if parent == Path(parent.anchor):
                    break
            os.chown(self.data_dir, info.pw_uid, info.pw_gid)
        log = self.data_dir / "postgres.log"
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            result = subprocess.run(
                [initdb, "-D", str(self.pgdata), "-U", self.user, "--auth=trust", "-E", "UTF8",
                 "--no-locale", *(["--no-sync"] if self.fast_unsafe else [])],
                capture_output=True, text=True, user=run_as, cwd=str(self.data_dir),
            )
            if result.returncode != 0:
                raise ServerFailed(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        if run_as:
            info = pwd.getpwnam(run_as)
            if not log.exists():
                log.touch()
            os.chown(log, info.pw_uid, info.pw_gid)
        self.port = self.port or free_port()
        settings = ["listen_addresses=127.0.0.1", f"port={self.port}", "unix_socket_directories=",
                    "max_connections=200", "shared_buffers=128MB"]
        if self.fast_unsafe:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        args = [postgres, "-D", str(self.pgdata)]
        for item in settings:
            args += ["-c", item]
        self.proc = spawn(args, log=log, user=run_as, cwd=str(self.data_dir))
        _wait_port(self.proc, self.port, "postgres", log, timeout=60)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import asyncio

        import asyncpg

        async def probe() -> None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    conn = await asyncpg.connect(self.url(), timeout=2)
                    await conn.close()
                    return
                except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)

        # A thread of its own: callers may already run an event loop in this thread.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, probe()).result()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, signal.SIGINT, timeout=30)  # fast shutdown
            self.proc = None
