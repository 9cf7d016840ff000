"""Orders: the buyer's view (order token), the order page with QR codes, and the
organiser's list, refunds and notification dead letters."""

from __future__ import annotations

from typing import Annotated, Any

import segno
from fastapi import APIRouter, Query, Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse

from gateway.api.deps import GatewayDep, OrgDep, TokenDep
from gateway.core.resources import TEMPLATES_DIR

router = APIRouter(tags=["orders"])
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


@router.get("/v1/orders/{order_id}")
async def get_order(order_id: str, gw: GatewayDep, token: TokenDep,
                    query_token: Annotated[str | None, Query(alias="token")] = None) -> Any:
    """The order and its tickets, for the holder of the order token from checkout."""
    return await gw.orders.for_buyer(order_id, token or query_token)


@router.get("/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
async def order_page(order_id: str, request: Request, gw: GatewayDep, token: TokenDep,
                     query_token: Annotated[str | None, Query(alias="token")] = None) -> HTMLResponse:
    order = await gw.orders.for_buyer(order_id, token or query_token)
    tickets = [{**t, "qr_svg": Markup(segno.make(t["code"], error="m").svg_inline(scale=4, dark="#111",
                                                                                   light="#fff"))}
               for t in order["tickets"]]
    return templates.TemplateResponse(request, "order.html", {"order": order, "tickets": tickets})


@router.get("/v1/events/{event_id}/orders", tags=["organiser"])
async def list_orders(event_id: int, org: OrgDep, gw: GatewayDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0)] = 0) -> Any:
    return await gw.orders.list(org, event_id, limit=limit, offset=offset)


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] | None = None


@router.post("/v1/orders/{order_id}/refund", tags=["organiser"])
async def refund(order_id: str, org: OrgDep, gw: GatewayDep, body: RefundBody | None = None) -> Any:
    return await gw.orders.refund(org, order_id, body.reason if body else None)


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1000)] | None = None


@router.get("/v1/notifications/dead", tags=["organiser"])
async def dead_letters(org: OrgDep, gw: GatewayDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """Notifications (e-mails, webhooks) of this organisation that failed every attempt."""
    return {"dead": await gw.orders.dead_letters(org, limit)}


@router.post("/v1/notifications/dead/replay", tags=["organiser"])
async def replay_dead_letters(org: OrgDep, gw: GatewayDep, body: ReplayBody | None = None) -> Any:
    """Send this organisation's dead letters again (all, or the listed ids)."""
    return {"replayed": await gw.orders.replay_dead_letters(org, body.ids if body else None)}
