"""Fixtures for provider tests: one simulator process per module, reset before each test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.store.redis import redis_client
from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import stop_process


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    proc, url = start_simulator_process()
    yield url
    stop_process(proc)


@pytest.fixture
def sim(simulator_url: str) -> Iterator[httpx.Client]:
    """A control client of the simulator (config, stats), reset to a clean state."""
    with httpx.Client(base_url=simulator_url, timeout=5) as client:
        client.post("/_reset").raise_for_status()
        yield client


@pytest.fixture
async def aredis(redis_server_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server_url)
    yield client
    await client.aclose()


@pytest.fixture
def breaker_key(redis_prefix: str) -> str:
    return f"{redis_prefix}:breaker:test-{secrets.token_hex(4)}"
