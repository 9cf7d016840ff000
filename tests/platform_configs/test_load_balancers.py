"""platform/nginx/ and platform/haproxy/: both configurations are valid for the real binaries, and in
front of two real gateways HAProxy takes the one whose `/readyz` answers 503 out of the rotation and puts it
back once it is ready again; nginx passes ordinary requests, keeps the gateway's body limits (1 MiB, 16 MiB
for seat-map uploads) and hides `/metrics`. docs/deployment.md, "Load balancer"."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.core.config import Settings
from gateway.stack.embedded import RedisServer, free_port, spawn, stop_process
from tests.conftest import need
from tests.utils.live import start_gateway
from tests.utils.servers import delete_prefix

PLATFORM = Path(__file__).resolve().parents[2] / "platform"
NGINX_CONF = PLATFORM / "nginx" / "flashgate.conf"
HAPROXY_CFG = PLATFORM / "haproxy" / "haproxy.cfg"
# A `server` line of an nginx upstream or an HAProxy backend: `server [name] address:port ...`.
UPSTREAM = re.compile(r"^\s*server\s+(?:\w+\s+)?(?P<addr>\d+\.\d+\.\d+\.\d+:\d+).*$", re.MULTILINE)


def binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        need(f"{name} not found: install Debian's `{package}` package (`apt-get install {package}`); .ci/run does")
    assert path is not None
    return path


def nginx_main(tmp: Path, include: Path, port: int | None = None) -> Path:
    """A main nginx.conf that includes ours in `http {}`, with every path in a temporary directory."""
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    main = tmp / "nginx.conf"
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would run as `nobody`, who cannot write request bodies under a private
    # temporary directory: keep them as the user running the test.
    user = "user root;" if os.geteuid() == 0 else ""
    main.write_text(f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp_paths}
    include {include};
}}
""")
    return main


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = binary("nginx", "nginx")
    out = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(nginx_main(tmp_path, NGINX_CONF))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


def test_haproxy_config_is_valid() -> None:
    haproxy = binary("haproxy", "haproxy")
    out = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_haproxy_checks_readyz_and_nginx_keeps_the_body_limits() -> None:
    # What the live tests below rely on: the shipped files say so themselves.
    cfg = HAPROXY_CFG.read_text()
    assert re.search(r"^\s*option httpchk GET /readyz\s*$", cfg, re.MULTILINE)
    assert re.search(r"^\s*http-check expect status 200\s*$", cfg, re.MULTILINE)
    assert "option forwardfor" in cfg
    assert re.search(r"^\s*retry-on conn-failure\s*$", cfg, re.MULTILINE)  # never a request a gateway got
    conf = NGINX_CONF.read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    live = conf[conf.index("location ~ ^/v1/events/[^/]+/live$"):]
    assert "proxy_buffering off;" in live[:live.index("}")]
    assert "non_idempotent" not in conf.split("#")[0]


# -- live: two real gateways, one of them on a Redis of its own that the test stops -----------------------


def _served(url: str) -> int:
    """Requests to /healthz this gateway has answered (its own /metrics, scraped from loopback)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(
        r'^flashgate_http_request_duration_seconds_count\{method="GET",route="/healthz",status="2xx"\} (\S+)$',
        text, re.MULTILINE)))


def _count_through(proxy: str, gateways: list[str], n: int) -> list[int]:
    """Send n requests through the proxy; how many each gateway answered (its metrics flush every second)."""
    before = [_served(g) for g in gateways]
    with httpx.Client(base_url=proxy, timeout=5) as client:
        for _ in range(n):
            assert client.get("/healthz").status_code == 200
    deadline = time.monotonic() + 5
    while True:
        counts = [_served(g) - b for g, b in zip(gateways, before)]
        if sum(counts) >= n or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


@pytest.fixture(scope="module")
def two_gateways(settings: Settings,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], RedisServer]]:
    """([gateway A, gateway B], B's own Redis): A on the suite's Redis, B on a private one."""
    tmp = tmp_path_factory.mktemp("balancers")
    own = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "lb"})
    private = RedisServer(tmp / "redis-b").start()
    try:
        with start_gateway(own, tmp, workers=1) as a, \
                start_gateway(own.model_copy(update={"redis_url": private.url}), tmp, workers=1) as b:
            yield [a, b], private
    finally:
        private.stop()
        delete_prefix(own.redis_url, own.redis_prefix)


def _upstreams(text: str, gateways: list[str]) -> str:
    """The shipped configuration with its example hosts replaced by the two gateways (the other examples
    dropped)."""
    hosts = [g.removeprefix("http://") for g in gateways]
    lines = list(UPSTREAM.finditer(text))
    assert len(lines) >= 2, "fewer than two upstream servers"
    out, last = [], 0
    for i, m in enumerate(lines):
        out.append(text[last:m.start()])
        if i < len(hosts):
            out.append(m.group(0).replace(m.group("addr"), hosts[i]))
            last = m.end()
        else:
            last = m.end() + 1  # dropped with its newline
    out.append(text[last:])
    return "".join(out)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_haproxy_takes_a_gateway_that_is_not_ready_out_and_back(two_gateways, tmp_path: Path) -> None:
    haproxy = binary("haproxy", "haproxy")
    (a, b), redis_b = two_gateways
    port = free_port()
    cfg = _upstreams(HAPROXY_CFG.read_text(), [a, b])
    cfg = re.sub(r"^(\s*bind\s+):80\b", rf"\g<1>127.0.0.1:{port}", cfg, flags=re.MULTILINE)
    cfg = cfg.replace("maxconn 20000", "maxconn 1000")  # within the file-descriptor limit of a test machine
    cfg = cfg.replace("inter 2s", "inter 300ms")  # the same checks, faster
    (tmp_path / "haproxy.cfg").write_text(cfg)
    proc = spawn([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], log=tmp_path / "haproxy.log")
    proxy = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ok(proxy + "/healthz"), 10, "haproxy answers")
        _wait(lambda: all(c > 0 for c in _count_through(proxy, [a, b], 10)), 10, "both gateways serve")
        assert httpx.get(proxy + "/metrics", timeout=5).status_code == 404  # scraped per host, not here

        redis_b.stop()  # B is alive (/healthz answers) but cannot sell: /readyz 503
        assert httpx.get(b + "/readyz", timeout=5).status_code == 503
        # Out after 2 failed checks 300 ms apart; from then on every request goes to A.
        _wait(lambda: _count_through(proxy, [a, b], 10) == [10, 0], 10, "gateway B out of the rotation")
        assert _count_through(proxy, [a, b], 20) == [20, 0]

        redis_b.start()  # same port, empty: B loads its scripts again and is ready
        _wait(lambda: _ok(b + "/readyz"), 10, "gateway B ready again")
        _wait(lambda: _count_through(proxy, [a, b], 10)[1] > 0, 10, "gateway B back in the rotation")
    finally:
        stop_process(proc)
        if redis_b.proc is None:  # B stays usable for the next test
            redis_b.start()


@pytest.mark.slow
def test_nginx_passes_requests_and_keeps_the_body_limits(two_gateways, tmp_path: Path) -> None:
    nginx = binary("nginx", "nginx")
    (a, b), _ = two_gateways
    port = free_port()
    conf = _upstreams(NGINX_CONF.read_text(), [a, b])
    conf = re.sub(r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{port};", conf, flags=re.MULTILINE)
    (tmp_path / "flashgate.conf").write_text(conf)
    main = nginx_main(tmp_path, tmp_path / "flashgate.conf")
    proc = spawn([nginx, "-p", str(tmp_path), "-c", str(main)], log=tmp_path / "nginx.log")
    proxy = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ok(proxy + "/healthz"), 10, "nginx answers")
        assert all(c > 0 for c in _count_through(proxy, [a, b], 10))
        assert httpx.get(proxy + "/metrics", timeout=5).status_code == 404
        with httpx.Client(base_url=proxy, timeout=10) as client:
            big = b"x" * (2 * 1_048_576)
            # Over the gateway's 1 MiB: refused before it reaches a gateway.
            resp = client.post("/v1/events/1/holds", content=big)
            assert resp.status_code == 413 and "nginx" in resp.text
            # Seat maps up to 16 MiB reach the gateway, which answers for itself (no API key here).
            resp = client.put("/v1/events/1/seat-map", content=big, headers={"Content-Type": "text/csv"})
            assert resp.status_code == 401, resp.text
            resp = client.put("/v1/events/1/seat-map", content=b"x" * (17 * 1_048_576))
            assert resp.status_code == 413 and "nginx" in resp.text
            resp = client.post("/v1/events", content=big, headers={"Content-Type": "application/json"})
            assert resp.status_code == 413 and "nginx" in resp.text
    finally:
        stop_process(proc)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
