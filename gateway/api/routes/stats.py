"""Organiser figures of one event: `GET /v1/events/{id}/stats`, the live stream `GET /v1/events/{id}/live`
(Server-Sent Events; docs/dashboard.md) and the audit's verdict `GET /v1/events/{id}/audit` (docs/audit.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from starlette.responses import StreamingResponse

from gateway.api.deps import GatewayDep, OrgDep, SalesDep
from gateway.api.responses import OrjsonResponse
from gateway.organisers.audit import audit_event

router = APIRouter(prefix="/v1/events", tags=["organiser"])
EventId = Annotated[int, Path(ge=1, le=10**18)]


@router.get("/{event_id}/stats")
async def event_stats(event_id: EventId, org: SalesDep, gw: GatewayDep) -> Any:
    """Sold / held / available per section and GA type, revenue, sales per minute, queue and admission,
    checkout funnel, provider breakers and pacing, dead letters: all from Redis (any worker answers the same)."""
    return await gw.live.stats(org, event_id)


@router.get("/{event_id}/live", response_class=StreamingResponse)
async def event_live(event_id: EventId, org: SalesDep, gw: GatewayDep,
                     last_event_id: Annotated[str | None, Header(max_length=64)] = None) -> StreamingResponse:
    """The same figures as Server-Sent Events as they change (seat changes as they happen); send
    `Last-Event-ID` to resume where a previous stream stopped."""
    stream = await gw.live_streams.open(org, event_id, last_event_id)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@router.get("/{event_id}/audit")
async def event_audit(event_id: EventId, org: OrgDep, gw: GatewayDep) -> Any:
    """`flashgate audit` over HTTP (admin keys): every check of the final state across Redis and Postgres
    and of the sale's history (the replayed change stream), each with its evidence, and the verdict."""
    await gw.live.owned(org, event_id)  # another organisation's event: 404, as a missing one
    rt = gw.runtime
    # The Postgres half on the read replica once it has replayed all the primary had (else the primary).
    report = await audit_event(redis=rt.redis, pool=await rt.pg(), prefix=rt.prefix, event_id=event_id,
                               scripts=rt.scripts, consistent=rt.reads.consistent)
    return OrjsonResponse({**report.as_dict(), "postgres": report.postgres})
