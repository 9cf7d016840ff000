"""Waiting-room fixtures: an in-process app with test-friendly limits, and an admission leader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.workers import admission
from tests.utils.factories import auth, new_org, seat_spec

RELAXED = {"queue_poll_per_ip_per_s": 1e6, "queue_poll_per_token_per_s": 1e6, "queue_join_per_ip_per_s": 1e6,
           "queue_join_per_ip_per_min": 1_000_000, "queue_join_per_buyer_per_min": 1_000_000,
           "queue_cache_s": 0.05}


@contextlib.asynccontextmanager
async def app_client(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    from gateway.api.app import create_app

    edge = create_app(settings.model_copy(update=overrides))
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            client.app = edge  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def qclient(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings, **RELAXED) as client:
        yield client


@contextlib.asynccontextmanager
async def leader(settings: Settings, **overrides: Any) -> AsyncIterator[None]:
    """An admission leader running in this process (the same code as `flashgate worker admission`)."""
    runtime = Runtime.from_settings(settings.model_copy(update=overrides))
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(admission.run(runtime, stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await runtime.close()


async def queue_event(client: httpx.AsyncClient, database_url: str, *, rate: float = 100, open_: bool = True,
                      prequeue: bool = False, **spec_args: Any) -> dict[str, Any]:
    """A queue-mode event, optionally with its pre-queue open, optionally on sale."""
    _, key = await new_org(database_url)
    spec = seat_spec(queue=True, **spec_args)
    spec["queue"]["admission_rate"] = rate
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 201, resp.text
    event = resp.json()
    event["api_key"] = key
    if prequeue:
        resp = await client.patch(f"/v1/events/{event['id']}/admission", json={"prequeue": True},
                                  headers=auth(key))
        assert resp.status_code == 200, resp.text
        event["commitment"] = resp.json()["queue"]["prequeue"]["commitment"]
    if open_:
        resp = await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
        assert resp.status_code == 200, resp.text
    return event


async def new_buyer(client: httpx.AsyncClient) -> dict[str, str]:
    resp = await client.post("/v1/buyer-token")
    assert resp.status_code == 201, resp.text
    return resp.json()


async def join(client: httpx.AsyncClient, event_id: int, buyer: dict[str, str], expect: int | None = None
               ) -> dict[str, Any]:
    resp = await client.post(f"/v1/events/{event_id}/queue", headers=auth(buyer["buyer_token"]))
    if expect is not None:
        assert resp.status_code == expect, resp.text
    else:
        assert resp.status_code in (200, 201), resp.text
    return resp.json()


async def poll(client: httpx.AsyncClient, event_id: int, queue_token: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event_id}/queue", headers=auth(queue_token))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)

