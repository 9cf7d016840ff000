"""Organiser routes: the organisation's API keys (admin keys only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import GatewayDep, OrgDep
from gateway.api.responses import OrjsonResponse

router = APIRouter(prefix="/v1/keys", tags=["organiser"])


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Literal["admin", "sales", "door"]


@router.post("", status_code=201)
async def create_key(body: NewKey, org: OrgDep, gw: GatewayDep) -> Any:
    """A new key with a name and a role; the answer's `key` is shown this once (only a hash is kept)."""
    return OrjsonResponse(await gw.api_keys.create(org, name=body.name, role=body.role), status_code=201)


@router.get("")
async def list_keys(org: OrgDep, gw: GatewayDep) -> Any:
    """The organisation's keys (names, roles, first characters, revocation times; never the keys)."""
    return {"keys": await gw.api_keys.list(org)}


@router.delete("/{key_id}")
async def revoke_key(key_id: Annotated[int, Path(ge=1, le=10**18)], org: OrgDep, gw: GatewayDep) -> Any:
    """Revoke a key: refused at once by every gateway worker."""
    return await gw.api_keys.revoke(org, key_id)
