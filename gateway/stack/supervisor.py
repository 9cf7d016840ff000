"""`flashgate up`: the whole local platform in one foreground process.

Starts (unless REDIS_URL / DATABASE_URL point at running servers) a private
Redis and Postgres with data under `var/`, applies migrations, then the gateway
(granian, N workers) and every background worker as child processes; writes
`var/stack.json`; prints the URLs. Ctrl-C (or SIGTERM) stops everything in
reverse order. A second run reuses the data.

A child that dies once the platform is up (a worker killed, the private Redis or
Postgres crashed) is started again after a backoff (0.5 s doubling to 30 s, back to
0.5 s once it stayed up 60 s), with the same arguments and data; each exit and
restart is logged with the child's name, how it ended and the delay. Only Ctrl-C or
SIGTERM stops the platform.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.core.config import Settings
from gateway.db.migrate import ensure_database, migrate
from gateway.stack.embedded import (MissingBinary, PostgresServer, RedisServer, ServerFailed, free_port, port_open,
                                     spawn, stop_process)
from gateway.store.cluster import is_cluster_url
from gateway.workers import WORKERS

RESTART_FIRST_S = 0.5   # delay before the first restart of a child that died
RESTART_MAX_S = 30.0    # the delay doubles per quick death up to this
RESTART_STABLE_S = 60.0  # a child that stayed up this long starts again from the first delay


@dataclass
class Restarts:
    """Restart bookkeeping of one child: how it is started again and its backoff."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started: float = 0.0  # monotonic time of the last start
    count: int = 0  # restarts so far
    quick: int = 0  # deaths in a row that came before RESTART_STABLE_S
    due: float | None = None  # monotonic time of the pending restart

    def delay(self, now: float) -> float:
        """The backoff before the next start, counting this death."""
        self.quick = self.quick + 1 if now - self.started < RESTART_STABLE_S else 1
        return min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (self.quick - 1))


def describe_exit(returncode: int | None) -> str:
    """`exit code 3` or `signal SIGKILL` (Popen reports a signal as a negative code)."""
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Stack:
    settings: Settings
    port: int
    workers: int
    demo: bool = False
    redis: RedisServer | None = None
    postgres: PostgresServer | None = None
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    restarts: dict[str, Restarts] = field(default_factory=dict)  # per child and "redis" / "postgres"
    _info: dict = field(default_factory=dict, init=False, repr=False)  # what stack.json says besides pids
    redis_url: str = ""
    database_url: str = ""
    payments_url: str = ""
    mail_dir: str = ""

    @property
    def var(self) -> Path:
        return self.settings.data_dir

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def say(self, line: str) -> None:
        print(f"flashgate: {line}", flush=True)

    def start(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        (self.var / "log").mkdir(exist_ok=True)
        if port_open(self.port):
            raise ServerFailed(f"port {self.port} is already in use; pass --port to choose another "
                               "(or stop the other stack)")
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
            self.say(f"using Redis at {self.redis_url}")
        else:
            self.redis = RedisServer(self.var / "redis", persistent=True).start()
            self.redis_url = self.redis.url
            self.say(f"started redis-server on {self.redis_url} (data: {self.redis.data_dir})")
        if self.settings.database_url:
            self.database_url = self.settings.database_url
            self.say("using Postgres at " + _redact(self.database_url))
        else:
            self.postgres = PostgresServer(self.var / "postgres").start()
            self.database_url = self.postgres.url("flashgate")
            self.say(f"started postgres on {self.database_url} (data: {self.postgres.pgdata})")
        asyncio.run(ensure_database(self.database_url))
        applied = asyncio.run(migrate(self.database_url))
        self.say(f"migrations applied: {[m.version for m in applied] or 'none pending'}")

        env = {**os.environ, "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
               "FLASHGATE_DATA_DIR": str(self.var)}
        # Local stand-ins for the outside world: the payment-provider simulator and a mail sink.
        if not os.environ.get("FLASHGATE_PAYMENTS_URL"):
            sim_port = free_port()
            # The simulator shares its state through one Redis; with a Redis Cluster it runs as one
            # process that keeps its state in memory (it is a local stand-in, not part of the sale).
            shared = [] if is_cluster_url(self.redis_url) else ["--workers", "4", "--redis-url", self.redis_url]
            self._child("payment-simulator", [sys.executable, "-m", "gateway.providers.simulator", "--port",
                                              str(sim_port), "--host", "127.0.0.1", *shared,
                                              "--prefix", f"{self.settings.redis_prefix}:sim"], env)
            env["FLASHGATE_PAYMENTS_URL"] = self.payments_url = f"http://127.0.0.1:{sim_port}"
            _wait_port(sim_port, "payment simulator")
        if not os.environ.get("FLASHGATE_NOTIFY_SMTP_HOST"):
            smtp_port = free_port()
            for sub in ("cur", "new", "tmp"):  # a Maildir
                (self.var / "mail" / sub).mkdir(parents=True, exist_ok=True)
            self._child("mail-sink", [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}",
                                      "-c", "aiosmtpd.handlers.Mailbox", str(self.var / "mail")], env)
            env["FLASHGATE_NOTIFY_SMTP_HOST"] = "127.0.0.1"
            env["FLASHGATE_NOTIFY_SMTP_PORT"] = str(smtp_port)
            self.mail_dir = str(self.var / "mail")
            _wait_port(smtp_port, "mail sink")
        for name, extra in self._services():
            self._child(name, [sys.executable, "-m", "gateway.cli", *extra], env)
        self._wait_ready()
        demo = self._demo(env, self.gateway_url) if self.demo else None
        self._info = {"gateway_url": self.gateway_url, "redis_url": self.redis_url,
                      "database_url": self.database_url, "payments_url": self.payments_url, "mail_dir": self.mail_dir,
                      "pid": os.getpid(), "started_at": time.time()}
        if demo:
            self._info["demo"] = demo
        self._write_info()
        self._print_urls(demo)

    def _write_info(self) -> None:
        """`var/stack.json`: URLs and the pids of the children (and of the private servers) as they are now."""
        info = {**self._info, "children": {name: proc.pid for name, proc in self.children},
                "servers": {name: server.proc.pid for name, server in (("redis", self.redis),
                                                                          ("postgres", self.postgres))
                            if server is not None and server.proc is not None},
                "restarts": {name: r.count for name, r in self.restarts.items() if r.count}}
        tmp = self.var / "stack.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.var / "stack.json")

    def _child(self, name: str, args: list[str], env: dict[str, str]) -> None:
        proc = spawn(args, log=self.var / "log" / f"{name}.log", env=env)
        self.children.append((name, proc))
        self.restarts[name] = Restarts(args=args, env=env, started=time.monotonic())

    def _services(self) -> list[tuple[str, list[str]]]:
        services = [("gateway", ["serve", "--port", str(self.port), "--workers", str(self.workers)])]
        services += [(f"worker-{name}", ["worker", name]) for name in WORKERS]
        return services

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.children:
                if proc.poll() is not None:
                    log = (self.var / "log" / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise ServerFailed(f"{name} exited with status {proc.returncode}:\n{log}")
            try:
                resp = httpx.get(self.gateway_url + "/readyz", timeout=2)
                if resp.status_code == 200:
                    return
                last = resp.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServerFailed(f"the gateway was not ready within {timeout:.0f} s: {last}")

    def _demo(self, env: dict[str, str], gateway_url: str) -> dict | None:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--json", "--gateway-url", gateway_url],
                             env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            self.say(f"demo set-up failed: {out.stderr.strip()[-500:]}")
            return None
        return json.loads(out.stdout)

    def _print_urls(self, demo: dict | None) -> None:
        lines = ["", "Flashgate is running.", f"  gateway      {self.gateway_url}",
                 f"  API docs     {self.gateway_url}/docs", f"  readiness    {self.gateway_url}/readyz",
                 f"  metrics      {self.gateway_url}/metrics  (Prometheus; docs/operations.md)"]
        for link in (demo or {}).get("links", []):
            lines.append(f"  {link['name']:<12} {link['url']}")
        if demo:
            lines.append(f"  demo API key {demo['api_key']}")
            if demo.get("device_token"):
                lines.append(f"  door token   {demo['device_token']}  (demo event, gate main)")
        if self.payments_url:
            lines.append(f"  payments     {self.payments_url}  (simulator; PUT /_config to set latency/declines)")
        if self.mail_dir:
            lines.append(f"  mail         {self.mail_dir}  (e-mails land here)")
        lines += [f"  redis        {self.redis_url}", f"  postgres     {_redact(self.database_url)}",
                  f"  logs         {self.var / 'log'}", "Press Ctrl-C to stop.", ""]
        print("\n".join(lines), flush=True)

    def watch(self) -> None:
        """Keep every child running until Ctrl-C / SIGTERM: a child that died is started again after its
        backoff (the private Redis and Postgres first, with their data and ports, as the others need them)."""
        for name in ("redis", "postgres"):
            self.restarts.setdefault(name, Restarts(started=time.monotonic()))
        while True:
            now = time.monotonic()
            for name, server in (("redis", self.redis), ("postgres", self.postgres)):
                if server is not None:
                    self._watch_server(name, server, now)
            for index, (name, proc) in enumerate(self.children):
                r = self.restarts[name]
                if r.due is None and proc.poll() is not None:
                    self._schedule(name, proc.returncode, now)
                elif r.due is not None and now >= r.due:
                    r.due = None
                    proc = spawn(r.args, log=self.var / "log" / f"{name}.log", env=r.env)
                    self.children[index] = (name, proc)
                    self._restarted(name, proc.pid)
            time.sleep(0.2)

    def _watch_server(self, name: str, server: RedisServer | PostgresServer, now: float) -> None:
        r = self.restarts[name]
        if r.due is None and server.proc is not None and server.proc.poll() is not None:
            self._schedule(name, server.proc.returncode, now)
        elif r.due is not None and now >= r.due:
            r.due = None
            try:
                server.start()  # same data directory and port: clients reconnect by themselves
            except ServerFailed as exc:
                server.stop()
                self._schedule(name, None, time.monotonic(), reason=f"did not start again ({exc})")
                return
            self._restarted(name, server.proc.pid if server.proc else 0)

    def _schedule(self, name: str, returncode: int | None, now: float, reason: str = "") -> None:
        r = self.restarts[name]
        delay = r.delay(now)
        r.due = now + delay
        uptime = now - r.started
        self.say(f"{name} {reason or f'exited ({describe_exit(returncode)}) after {uptime:.1f} s'}; "
                 f"restarting in {delay:.1f} s (see {self.var / 'log'})")

    def _restarted(self, name: str, pid: int) -> None:
        r = self.restarts[name]
        r.count += 1
        r.started = time.monotonic()
        self.say(f"{name} restarted (pid {pid}, restart {r.count})")
        self._write_info()

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            stop_process(proc, signal.SIGTERM, timeout=20)
        self.children.clear()
        if self.postgres:
            self.postgres.stop()
        if self.redis:
            self.redis.stop()
        try:
            (self.var / "stack.json").unlink()
        except FileNotFoundError:
            pass
        self.say("stopped")


def _wait_port(port: int, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise ServerFailed(f"the {what} did not listen on port {port} within {timeout:.0f} s")
        time.sleep(0.05)


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}//{creds.split(':', 1)[0]}:***@{host}"
    return url


class Interrupted(Exception):
    pass


def run_up(settings: Settings, *, port: int, workers: int, demo: bool) -> int:
    stack = Stack(settings=settings, port=port, workers=workers, demo=demo)
    stopping: list[bool] = []

    def on_signal(signum: int, frame: object) -> None:
        if not stopping:
            stopping.append(True)
            raise Interrupted()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        stack.watch()
        return 1
    except Interrupted:
        return 0
    except (ServerFailed, MissingBinary) as exc:
        print(f"flashgate: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopping.append(True)  # a second Ctrl-C no longer interrupts the clean stop
        stack.stop()
