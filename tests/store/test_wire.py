"""The hand-written pipelined connection (gateway/store/wire.py) against real redis-server processes:
it never hangs on a stalled Redis, refuses to buffer without bound, and speaks TCP, TLS and unix
sockets. Each test that stops a server starts its own, in its own directory."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.stack.embedded import MissingBinary, RedisServer, ServerFailed, free_port
from gateway.store.wire import WireConnection, encode
from tests.conftest import need

pytestmark = pytest.mark.anyio

PING = encode("PING")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (a unix socket path must stay under ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fgwire-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_redis(directory: Path, *extra: str, port: int = 0) -> RedisServer:
    try:
        return RedisServer(directory, port=port, extra_args=list(extra)).start()
    except MissingBinary as exc:
        need(str(exc))
        raise


@pytest.fixture
def private_redis(short_dir: Path) -> Iterator[RedisServer]:
    server = start_redis(short_dir / "redis")
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)  # never leave a stopped server behind
    server.stop()


def prefix() -> str:
    return f"wire-{secrets.token_hex(4)}"


async def test_stalled_redis_times_out_then_reconnects(private_redis: RedisServer):
    wire = WireConnection(private_redis.url, timeout_s=0.5)
    pid = private_redis.proc.pid
    try:
        assert await wire.call(PING) == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            first, second = wire.call(PING), wire.call(encode("ECHO", "x"))
            await asyncio.sleep(0.05)
            third = wire.call(PING)  # a later batch on the same stalled connection
            with pytest.raises(RedisTimeoutError):
                # the guard only stops a hang from hanging the suite: it raises the builtin TimeoutError
                await asyncio.wait_for(first, 3.0)
            elapsed = time.monotonic() - started
            assert elapsed < 3.0, f"the stalled call took {elapsed:.2f} s to fail"
            for later in (second, third):
                with pytest.raises(RedisTimeoutError):
                    await asyncio.wait_for(later, 1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await asyncio.wait_for(wire.call(PING), 3.0) == b"PONG"
        assert await asyncio.wait_for(wire.call(encode("ECHO", "back")), 3.0) == b"back"
    finally:
        await wire.close()


async def test_connect_to_stalled_redis_is_bounded(private_redis: RedisServer):
    """The kernel still accepts connections to a stopped Redis; the SELECT of set-up never gets an
    answer, and the queued call must still fail in time."""
    url = private_redis.url.rsplit("/", 1)[0] + "/3"
    wire = WireConnection(url, timeout_s=0.5)
    pid = private_redis.proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(wire.call(PING), 3.0)
            assert time.monotonic() - started < 3.0
        finally:
            os.kill(pid, signal.SIGCONT)
        key = f"{prefix()}:db3"
        assert await asyncio.wait_for(wire.call(encode("SET", key, "v")), 3.0) == b"OK"
        with redis.Redis.from_url(url) as check:
            assert check.get(key) == b"v"
            check.delete(key)
    finally:
        await wire.close()


async def test_write_backpressure_fails_fast_instead_of_buffering(private_redis: RedisServer):
    limit = 64 << 10
    wire = WireConnection(private_redis.url, timeout_s=30.0, max_buffer_bytes=limit)
    pid = private_redis.proc.pid
    key = f"{prefix()}:big"
    command = encode("SET", key, b"x" * (512 << 10))
    futures: list[asyncio.Future] = []
    try:
        assert await wire.call(PING) == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused_at = None
            for _ in range(200):  # 100 MiB: far more than the kernel's socket buffers take
                futures.append(wire.call(command))
                await asyncio.sleep(0)  # one batch per loop tick
                if futures[-1].done():
                    refused_at = refused_at or time.monotonic()
            assert refused_at is not None, "no batch was refused although Redis reads nothing"
            assert refused_at - started < 5.0
            refused = [f for f in futures if f.done()]
            assert len(refused) > 100
            for fut in refused:
                with pytest.raises(RedisConnectionError, match="not keeping up"):
                    fut.result()
            buffered = wire._conn.transport.get_write_buffer_size()
            assert buffered <= limit + len(command), f"{buffered} bytes buffered despite the limit"
        finally:
            os.kill(pid, signal.SIGCONT)
        accepted = [f for f in futures if not f.done()]
        results = await asyncio.wait_for(asyncio.gather(*accepted), 30.0)
        assert results and all(r == b"OK" for r in results)
        assert await wire.call(encode("DEL", key)) == 1
    finally:
        await asyncio.gather(*futures, return_exceptions=True)
        await wire.close()


async def test_thousand_concurrent_calls_resolve_in_order(redis_server_url: str):
    # A short timeout under sustained load: the watchdog must follow the batches, never fire wrongly.
    wire = WireConnection(redis_server_url, timeout_s=0.5, max_buffer_bytes=8 << 20)
    p = prefix()
    try:
        deadline = time.monotonic() + 1.6
        rounds = 0
        while rounds < 3 or time.monotonic() < deadline:
            keys = [f"{p}:n{rounds}:{i}" for i in range(1000)]
            echoes = [wire.call(encode("ECHO", f"v{rounds}-{i}")) for i in range(500)]
            incrs = [wire.call(encode("INCRBY", k, i + 1)) for i, k in enumerate(keys)]
            got_echoes, got_incrs = await asyncio.gather(asyncio.gather(*echoes), asyncio.gather(*incrs))
            assert got_echoes == [f"v{rounds}-{i}".encode() for i in range(500)]
            assert got_incrs == list(range(1, 1001))
            # 1,000 tasks each awaiting its own call, queued over several loop ticks
            async def one(i: int) -> bytes:
                await asyncio.sleep(0 if i % 3 else 0.001)
                return await wire.call(encode("ECHO", f"t{i}"))
            assert await asyncio.gather(*(one(i) for i in range(1000))) == [f"t{i}".encode() for i in range(1000)]
            rounds += 1
        await wire.call(encode("DEL", *[f"{p}:n{r}:{i}" for r in range(rounds) for i in range(1000)]))
    finally:
        await wire.close()


async def test_errors_are_mapped_and_done_futures_skipped(redis_server_url: str):
    wire = WireConnection(redis_server_url)
    try:
        with pytest.raises(NoScriptError):
            await wire.call(encode("EVALSHA", "0" * 40, 0))
        with pytest.raises(ResponseError) as err:
            await wire.call(encode("INCRBY", f"{prefix()}:k", "not-a-number"))
        assert not isinstance(err.value, NoScriptError)
        cancelled = wire.call(encode("ECHO", "dropped"))
        cancelled.cancel()
        assert await wire.call(encode("ECHO", "kept")) == b"kept"
    finally:
        await wire.close()


async def test_unix_socket_with_db_and_password(short_dir: Path):
    sock = short_dir / "r.sock"
    server = start_redis(short_dir / "redis", "--unixsocket", str(sock), "--unixsocketperm", "700",
                         "--requirepass", "s3cret")
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.02)
        p = prefix()
        for url in (f"unix://:s3cret@{sock}?db=2", f"unix://{sock}?db=2&password=s3cret"):
            wire = WireConnection(url)
            try:
                assert await wire.call(PING) == b"PONG"
                assert await wire.call(encode("SET", f"{p}:k", url)) == b"OK"
                assert await wire.call(encode("GET", f"{p}:k")) == url.encode()
            finally:
                await wire.close()
        with redis.Redis(unix_socket_path=str(sock), password="s3cret", db=2) as check:
            assert check.get(f"{p}:k") == f"unix://{sock}?db=2&password=s3cret".encode()
        with redis.Redis(unix_socket_path=str(sock), password="s3cret", db=0) as check:
            assert check.get(f"{p}:k") is None, "SELECT from ?db= was not applied"
    finally:
        server.stop()


def _write_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flashgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


async def test_tls_with_and_without_verification(short_dir: Path):
    certs = short_dir / "certs"
    certs.mkdir()
    ca, cert, key = _write_certs(certs)
    port = free_port()
    try:
        # `port=` makes the helper wait for the TLS port; `--port 0` then turns plain TCP off.
        server = RedisServer(short_dir / "redis", port=port, extra_args=[
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]).start()
    except MissingBinary as exc:
        need(str(exc))
        return
    except ServerFailed as exc:
        if "tls" not in str(exc).lower():
            raise
        need(f"this redis-server refuses the TLS options (built without TLS?): {str(exc)[-500:]}")
        return
    try:
        urls = [f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none",
                f"rediss://127.0.0.1:{port}/1?ssl_cert_reqs=required&ssl_ca_certs={ca}",
                f"rediss://localhost:{port}/0?ssl_ca_certs={ca}"]  # required is the default
        for url in urls:
            wire = WireConnection(url, timeout_s=2.0)
            try:
                assert await wire.call(PING) == b"PONG"
                assert await wire.call(encode("ECHO", url)) == url.encode()
            finally:
                await wire.close()
        # verification is really on: without the CA the self-signed chain is refused
        wire = WireConnection(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required", timeout_s=2.0)
        try:
            with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await wire.call(PING)
        finally:
            await wire.close()
        # and plain RESP to the TLS port does not pass for a reply
        wire = WireConnection(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        try:
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                await asyncio.wait_for(wire.call(PING), 3.0)
        finally:
            await wire.close()
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:7000/0", "http://127.0.0.1:6379/0",
                                 "rediss+sentinel://h:26379/m", "127.0.0.1:6379"])
def test_unsupported_scheme_is_refused_at_construction(url: str):
    with pytest.raises(ValueError) as err:
        WireConnection(url)
    message = str(err.value)
    scheme = url.split("://")[0] if "://" in url else None
    if scheme:
        assert f"{scheme}://" in message
    assert "redis://" in message and "rediss://" in message and "unix://" in message


def test_supported_url_forms_parse():
    w = WireConnection("redis://u%40x:p%3Aw@example.com:6380/4")
    assert (w.host, w.port, w.db, w.username, w.password, w.ssl, w.path) == (
        "example.com", 6380, 4, "u@x", "p:w", None, None)
    assert WireConnection("redis://h/1?db=7").db == 7  # the query wins, as in redis-py
    w = WireConnection("unix://:pw@/run/redis/r.sock?db=5")
    assert (w.path, w.db, w.password, w.username) == ("/run/redis/r.sock", 5, "pw", None)
    w = WireConnection("unix:///tmp/r.sock?password=q&username=me")
    assert (w.path, w.db, w.password, w.username) == ("/tmp/r.sock", 0, "q", "me")
    import ssl

    assert WireConnection("rediss://h:6390/0").ssl.verify_mode == ssl.CERT_REQUIRED
    assert WireConnection("rediss://h:6390/0").ssl.check_hostname
    lax = WireConnection("rediss://h:6390/0?ssl_cert_reqs=none").ssl
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        WireConnection("rediss://h/0?ssl_cert_reqs=maybe")
    with pytest.raises(ValueError, match="socket path"):
        WireConnection("unix://")
