"""Session fixtures: a real Redis and a real Postgres for the whole suite.

When REDIS_URL / DATABASE_URL are set, those servers are used; otherwise
private servers are started from the binaries on PATH in a temporary
directory, on free loopback ports. Either way the session gets its own
Postgres database (created, migrated, dropped) and its own Redis key prefix
(deleted at the end), so parallel runs and leftovers cannot interfere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from gateway.core.config import ProviderSettings, Settings
from gateway.db.migrate import migrate
from gateway.stack.embedded import MissingBinary, PostgresServer, RedisServer
from tests.utils.servers import delete_prefix, drop_database, run_async

IN_CI = bool(os.environ.get("CI"))
logging.getLogger("httpx").setLevel(logging.WARNING)


def need(reason: str) -> None:
    """Skip loudly on a laptop; fail in CI, where nothing may be skipped for a missing package."""
    if IN_CI:
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flashgate-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server_url(tmp_root: Path) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    try:
        server = RedisServer(tmp_root / "redis").start()
    except MissingBinary as exc:
        pytest.exit(str(exc), returncode=3)
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_root: Path) -> Iterator[str]:
    """A URL of the server's maintenance database (`.../postgres`)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url.rsplit("/", 1)[0] + "/postgres"
        return
    try:
        server = PostgresServer(tmp_root / "postgres", fast_unsafe=True).start()
    except MissingBinary as exc:
        pytest.exit(str(exc), returncode=3)
    yield server.url()
    server.stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str, run_id: str) -> Iterator[str]:
    name = f"flashgate_test_{run_id}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_async(create)
    url = postgres_server_url.rsplit("/", 1)[0] + "/" + name
    run_async(migrate, url)
    yield url
    run_async(drop_database, postgres_server_url, name)


@pytest.fixture(scope="session")
def redis_prefix(redis_server_url: str, run_id: str) -> Iterator[str]:
    prefix = f"t{run_id}"
    yield prefix
    delete_prefix(redis_server_url, prefix)


@pytest.fixture(scope="session")
def settings(redis_server_url: str, database_url: str, redis_prefix: str, tmp_root: Path,
             payment_simulator: str) -> Settings:
    return Settings(environment="test", redis_url=redis_server_url, database_url=database_url,
                    redis_prefix=redis_prefix, data_dir=tmp_root / "data", secret_key="test-" + "x" * 40,
                    payments=ProviderSettings(url=payment_simulator, breaker_reset_s=1))


@pytest.fixture
def redis_sync(redis_server_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server_url)
    yield client
    client.close()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def payment_simulator(tmp_root: Path, redis_server_url: str) -> Iterator[str]:
    """The payment-provider simulator as a real HTTP server; the gateway finds it through the environment."""
    from gateway.providers.simulator import start_simulator_process
    from gateway.stack.embedded import stop_process

    proc, url = start_simulator_process(log=tmp_root / "simulator.log", workers=4, redis_url=redis_server_url)
    os.environ["FLASHGATE_PAYMENTS_URL"] = url
    os.environ.setdefault("FLASHGATE_PAYMENTS_BREAKER_RESET_S", "1")
    yield url
    stop_process(proc)


@pytest.fixture
def sim(payment_simulator: str) -> Iterator[httpx.Client]:
    """Control client of the simulator; its configuration is reset before and after each test."""
    with httpx.Client(base_url=payment_simulator, timeout=5) as control:
        control.post("/_reset").raise_for_status()
        yield control
        control.post("/_reset").raise_for_status()


@pytest.fixture
async def app(settings: Settings, payment_simulator: str):
    from gateway.api.app import create_app

    edge = create_app(settings)
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        yield edge


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


@pytest.fixture(scope="session")
def live_gateway(settings: Settings, tmp_root: Path, payment_simulator: str) -> Iterator[str]:
    """A real gateway (granian, 2 workers) on a free port, for tests over real HTTP."""
    from tests.utils.live import start_gateway

    with start_gateway(settings, tmp_root) as url:
        yield url
