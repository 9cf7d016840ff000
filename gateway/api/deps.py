"""Typed dependencies for the FastAPI routes."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.services.orgs import organisation_for_key
from gateway.store.scripts import Scripts

_KEY_CACHE_S = 30.0


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_scripts(request: Request) -> Scripts:
    return request.app.state.runtime.extras["scripts"]


async def get_organisation(request: Request) -> int:
    """The organisation of the API key in `Authorization: Bearer <key>` (cached briefly per worker)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise DomainError("unauthorized", "Send your organisation API key as `Authorization: Bearer <key>`.",
                          headers={"WWW-Authenticate": "Bearer"})
    key = key.strip()
    runtime: Runtime = request.app.state.runtime
    cache: dict[str, tuple[int | None, float]] = runtime.extras.setdefault("api_key_cache", {})
    hit = cache.get(key)
    now = time.monotonic()
    if hit and hit[1] > now:
        org = hit[0]
    else:
        org = await organisation_for_key(await runtime.pg(), api_key=key)
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (org, now + _KEY_CACHE_S)
    if org is None:
        raise DomainError("unauthorized", "This API key is not valid.", headers={"WWW-Authenticate": "Bearer"})
    return org


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ScriptsDep = Annotated[Scripts, Depends(get_scripts)]
OrgDep = Annotated[int, Depends(get_organisation)]
