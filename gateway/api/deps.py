"""Typed dependencies of the FastAPI routes: the process's services, the caller's
organisation, and the bearer token of a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.wiring import Gateway


# Dependencies are `async def` even when they do not await: FastAPI runs plain `def` dependencies in
# a thread pool, which costs a thread hop per request.
async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TokenDep = Annotated[str | None, Depends(bearer_token)]


async def get_organisation(gateway: GatewayDep, token: TokenDep) -> int:
    """The organisation of the API key in `Authorization: Bearer <key>`."""
    return await gateway.api_keys.organisation(token)


OrgDep = Annotated[int, Depends(get_organisation)]
