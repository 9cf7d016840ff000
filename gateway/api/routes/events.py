"""Organiser routes: events, their sale status and admission."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway.api.deps import GatewayDep, OrgDep, SalesDep
from gateway.api.responses import OrjsonResponse
from gateway.core.errors import DomainError
from gateway.organisers.event_spec import AwareTime, EventSpec
from gateway.organisers.seatmap_csv import decode as decode_csv

router = APIRouter(prefix="/v1/events", tags=["organiser"])
EventId = Annotated[int, Path(ge=1, le=10**18)]  # event ids are bigints: a larger one is refused (422)


@router.post("", status_code=201)
async def create_event(spec: EventSpec, org: OrgDep, gw: GatewayDep) -> Any:
    return OrjsonResponse(await gw.events.create(org, spec), status_code=201)


@router.get("")
async def list_events(org: SalesDep, gw: GatewayDep) -> Any:
    return {"events": await gw.events.list(org)}


@router.get("/{event_id}")
async def get_event(event_id: EventId, org: SalesDep, gw: GatewayDep) -> Any:
    return await gw.events.get(org, event_id)


@router.post("/{event_id}/open")
async def open_event(event_id: EventId, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "open")


@router.post("/{event_id}/pause")
async def pause_event(event_id: EventId, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "pause")


@router.post("/{event_id}/close")
async def close_event(event_id: EventId, org: OrgDep, gw: GatewayDep) -> Any:
    return await gw.events.change_status(org, event_id, "close")


class AdmissionChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_s: Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)] | None = None
    prequeue: bool | None = None


@router.patch("/{event_id}/admission")
async def change_admission(event_id: EventId, change: AdmissionChange, org: OrgDep, gw: GatewayDep) -> Any:
    """Set the admission rate (buyers per second) and/or open the pre-queue before the sale."""
    if change.rate_per_s is None and not change.prequeue:
        raise DomainError("validation_error", "Send `rate_per_s` (a number > 0) and/or `prequeue: true`.",
                          details={"fields": ["rate_per_s", "prequeue"]}, status=422)
    queue = await gw.queue_admin.set_admission(organisation_id=org, event_id=event_id,
                                               rate_per_s=change.rate_per_s, prequeue=change.prequeue)
    return {"event_id": event_id, "queue": queue}


@router.put("/{event_id}/seat-map", openapi_extra={"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}, "example": "section,row,seat,tier\nA,1,1,front\nA,1,2,front\n"}}}})
async def import_seat_map(event_id: EventId, request: Request, org: OrgDep, gw: GatewayDep) -> Any:
    """Replace a draft event's seat map with CSV (`Content-Type: text/csv`; one line per seat:
    `section,row,seat,tier`). Errors name the line and column; at most 250,000 seats."""
    # Read only after the key was checked (the body may be megabytes).
    return await gw.events.import_seat_map(org, event_id, decode_csv(await request.body()))


class ScheduleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sale_opens_at: AwareTime | None = None
    sale_closes_at: AwareTime | None = None

    @field_validator("sale_closes_at")
    @classmethod
    def _order(cls, closes: Any, info: ValidationInfo) -> Any:
        opens = info.data.get("sale_opens_at")
        if closes is not None and opens is not None and closes <= opens:
            raise ValueError("sale_closes_at must be after sale_opens_at")
        return closes


@router.put("/{event_id}/schedule")
async def change_schedule(event_id: EventId, change: ScheduleChange, org: OrgDep, gw: GatewayDep) -> Any:
    """Set when the sale opens and closes by itself (null: by hand). Sent as a whole: an omitted time is
    cleared."""
    return await gw.events.set_schedule(org, event_id, opens=change.sale_opens_at, closes=change.sale_closes_at)
