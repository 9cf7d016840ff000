"""Organiser figures of one event: `GET /v1/events/{id}/stats`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import OrgDep, RuntimeDep
from gateway.services import events
from gateway.services.waiting_room import queue_stats

router = APIRouter(prefix="/v1/events", tags=["organiser"])


@router.get("/{event_id}/stats")
async def event_stats(event_id: int, org: OrgDep, runtime: RuntimeDep) -> Any:
    await events.get_event(await runtime.pg(), organisation_id=org, event_id=event_id)
    return {"event_id": event_id, "queue": await queue_stats(runtime, event_id)}
