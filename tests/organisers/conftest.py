"""Organiser fixtures: an in-process app with chosen settings (each with its own per-worker state)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.core.config import Settings


@contextlib.asynccontextmanager
async def app_client(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway app in this process (like one worker) and a client talking to it over ASGI. Requests
    come from 127.0.0.1, a trusted proxy here, so `X-Forwarded-For` picks the client address."""
    from gateway.api.app import create_app

    edge = create_app(settings.model_copy(update={"trusted_proxies": "127.0.0.1/32", **overrides}))
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            client.app = edge  # type: ignore[attr-defined]
            yield client


def from_address(headers: dict[str, str], address: str) -> dict[str, str]:
    return {**headers, "X-Forwarded-For": address}
