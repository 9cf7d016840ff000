"""Typed dependencies of the FastAPI routes: the process's services, the caller's
organisation (with the role its API key allows), and the bearer token of a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from gateway.core.errors import DomainError
from gateway.organisers.orgs import Caller
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


async def get_caller(request: Request, gateway: GatewayDep, token: TokenDep) -> Caller:
    """The organisation and role of the API key in `Authorization: Bearer <key>`."""
    caller = await gateway.api_keys.authenticate(token, gateway.addresses.of_scope(request.scope))
    request.state.organisation_id = caller.organisation_id  # for the request's log lines (gateway/core/logs.py)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_role(*roles: str) -> Callable[..., Awaitable[int]]:
    """A dependency answering the caller's organisation id when its key has one of `roles`, else 403.
    Use as `Annotated[int, Depends(require_role("admin", "door"))]`."""
    allowed = frozenset(roles)

    async def organisation(caller: CallerDep) -> int:
        if caller.role not in allowed:
            raise DomainError("forbidden", f"A {caller.role} key may not do this; it needs a key with the role "
                              f"{' or '.join(sorted(allowed))}.",
                              details={"role": caller.role, "allowed_roles": sorted(allowed)})
        return caller.organisation_id

    return organisation


# Every organiser route takes one of these (the organisation id of the caller).
OrgDep = Annotated[int, Depends(require_role("admin"))]                  # everything else: admin keys
SalesDep = Annotated[int, Depends(require_role("admin", "sales"))]       # read events, figures, orders; refund
DoorDep = Annotated[int, Depends(require_role("admin", "door"))]         # scanning devices
