"""Organiser routes: events, their sale status and admission."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import GatewayDep, OrgDep
from gateway.api.responses import OrjsonResponse
from gateway.core.errors import DomainError
from gateway.organisers.event_spec import EventSpec

router = APIRouter(prefix="/v1/events", tags=["organiser"])


@router.post("", status_code=201)
async def create_event(spec: EventSpec, org: OrgDep, gw: GatewayDep) -> Any:
    return OrjsonResponse(await gw.events.create(org, spec), status_code=201)


@router.get("")
async def list_events(org: OrgDep, gw: GatewayDep) -> Any:
    return {"events": await gw.events.list(org)}


@router.get("/{event_id}")
async def get_event(event_id: int, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.get(org, event_id)


@router.post("/{event_id}/open")
async def open_event(event_id: int, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "open")


@router.post("/{event_id}/pause")
async def pause_event(event_id: int, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "pause")


@router.post("/{event_id}/close")
async def close_event(event_id: int, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "close")


class AdmissionChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_s: Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)] | None = None
    prequeue: bool | None = None


@router.patch("/{event_id}/admission")
async def change_admission(event_id: int, change: AdmissionChange, org: OrgDep, gw: GatewayDep) -> Any:
    """Set the admission rate (buyers per second) and/or open the pre-queue before the sale."""
    if change.rate_per_s is None and not change.prequeue:
        raise DomainError("validation_error", "Send `rate_per_s` (a number > 0) and/or `prequeue: true`.",
                          details={"fields": ["rate_per_s", "prequeue"]}, status=422)
    queue = await gw.queue_admin.set_admission(organisation_id=org, event_id=event_id,
                                               rate_per_s=change.rate_per_s, prequeue=change.prequeue)
    return {"event_id": event_id, "queue": queue}
