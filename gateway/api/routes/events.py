"""Organiser routes: events and their sale status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import OrgDep, RuntimeDep
from gateway.api.responses import OrjsonResponse
from gateway.core.errors import DomainError
from gateway.services import events, queue_admin
from gateway.services.event_spec import EventSpec

router = APIRouter(prefix="/v1/events", tags=["organiser"])


@router.post("", status_code=201)
async def create_event(spec: EventSpec, org: OrgDep, runtime: RuntimeDep) -> Any:
    view = await events.create_event(await runtime.pg(), organisation_id=org, spec=spec)
    return OrjsonResponse(view, status_code=201)


@router.get("")
async def list_events(org: OrgDep, runtime: RuntimeDep) -> Any:
    return {"events": await events.list_events(await runtime.pg(), organisation_id=org)}


@router.get("/{event_id}")
async def get_event(event_id: int, org: OrgDep, runtime: RuntimeDep) -> Any:
    return await events.get_event(await runtime.pg(), organisation_id=org, event_id=event_id)


async def _status(runtime: Any, org: int, event_id: int, action: str) -> Any:
    view = await events.change_status(await runtime.pg(), redis=runtime.redis, scripts=runtime.extras["scripts"],
                                      prefix=runtime.settings.redis_prefix, organisation_id=org,
                                      event_id=event_id, action=action)
    snapshots = runtime.extras.get("snapshots")
    if snapshots is not None:
        await snapshots.refresh_event(event_id)
    room = runtime.extras.get("waiting_room")
    if room is not None:  # opening closes the pre-queue (shuffle) at once
        await room.event_changed(event_id)
    return view


@router.post("/{event_id}/open")
async def open_event(event_id: int, org: OrgDep, runtime: RuntimeDep) -> Any:
    return await _status(runtime, org, event_id, "open")


@router.post("/{event_id}/pause")
async def pause_event(event_id: int, org: OrgDep, runtime: RuntimeDep) -> Any:
    return await _status(runtime, org, event_id, "pause")


@router.post("/{event_id}/close")
async def close_event(event_id: int, org: OrgDep, runtime: RuntimeDep) -> Any:
    return await _status(runtime, org, event_id, "close")


class AdmissionChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_s: Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)] | None = None
    prequeue: bool | None = None


@router.patch("/{event_id}/admission")
async def change_admission(event_id: int, change: AdmissionChange, org: OrgDep, runtime: RuntimeDep) -> Any:
    """Set the admission rate (buyers per second) and/or open the pre-queue before the sale."""
    if change.rate_per_s is None and not change.prequeue:
        raise DomainError("validation_error", "Send `rate_per_s` (a number > 0) and/or `prequeue: true`.",
                          details={"fields": ["rate_per_s", "prequeue"]}, status=422)
    queue = await queue_admin.set_admission(runtime, organisation_id=org, event_id=event_id,
                                            rate_per_s=change.rate_per_s, prequeue=change.prequeue)
    return {"event_id": event_id, "queue": queue}
