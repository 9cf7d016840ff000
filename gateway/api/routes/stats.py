"""Organiser figures of one event: `GET /v1/events/{id}/stats`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import GatewayDep, OrgDep

router = APIRouter(prefix="/v1/events", tags=["organiser"])


@router.get("/{event_id}/stats")
async def event_stats(event_id: int, org: OrgDep, gw: GatewayDep) -> Any:
    await gw.events.get(org, event_id)
    return {"event_id": event_id, "queue": await gw.queue_admin.stats(event_id),
            # this gateway worker's view: the breaker is shared, pacing and bulkhead are per process
            "providers": {"payments": await gw.payments.stats()}}
