"""Orders: the buyer's view (order token), the order page with QR codes, and the
organiser's list, refunds and notification dead letters."""

from __future__ import annotations

from typing import Annotated, Any

import segno
from fastapi import APIRouter, Path, Query, Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse

from gateway.api.deps import GatewayDep, OrgDep, SalesDep, TokenDep
from gateway.api.responses import OrjsonResponse
from gateway.core.resources import TEMPLATES_DIR

router = APIRouter(tags=["orders"])
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


# Answers that carry tickets or tokens are neither cached nor announced to another site.
TOKEN_HEADERS = {"cache-control": "no-store", "referrer-policy": "no-referrer"}
ORDER_PAGE_HEADERS = {**TOKEN_HEADERS, "x-content-type-options": "nosniff",
                      "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                                 "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"}


@router.get("/v1/orders/{order_id}")
async def get_order(order_id: Annotated[str, Path(max_length=64)], gw: GatewayDep, token: TokenDep) -> Any:
    """The order and its tickets, for the holder of the order token from checkout (`Authorization:
    Bearer`; never in the URL), with `order_page_url`: a link to the order page valid for 10 minutes."""
    return OrjsonResponse(await gw.orders.for_buyer(order_id, token), headers=TOKEN_HEADERS)


@router.get("/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
async def order_page(order_id: str, request: Request, gw: GatewayDep,
                     link: Annotated[str | None, Query(alias="token", max_length=4096)] = None) -> HTMLResponse:
    """The order page with a QR code per ticket, opened with `order_page_url` (a short-lived link)."""
    order = await gw.orders.for_page(order_id, link)
    tickets = [{**t, "qr_svg": Markup(segno.make(t["code"], error="m").svg_inline(scale=4, dark="#111",
                                                                                   light="#fff"))}
               for t in order["tickets"]]
    return templates.TemplateResponse(request, "order.html", {"order": order, "tickets": tickets},
                                      headers=ORDER_PAGE_HEADERS)


@router.get("/v1/events/{event_id}/orders", tags=["organiser"])
async def list_orders(event_id: Annotated[int, Path(ge=1, le=10**18)], org: SalesDep, gw: GatewayDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> Any:
    return await gw.orders.list(org, event_id, limit=limit, offset=offset)


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] | None = None


@router.post("/v1/orders/{order_id}/refund", tags=["organiser"])
async def refund(order_id: str, org: SalesDep, gw: GatewayDep, body: RefundBody | None = None) -> Any:
    return await gw.orders.refund(org, order_id, body.reason if body else None)


def _stream_id(value: str) -> str:
    """A Redis stream entry id, `<ms>-<seq>`, each part a 64-bit unsigned number (as `GET` lists them)."""
    ms, dash, seq = value.partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()
            and int(ms) < 2**64 and int(seq) < 2**64):
        raise ValueError("must be a dead letter id such as 1700000000000-0")
    return value


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[Annotated[str, Field(max_length=41), AfterValidator(_stream_id)]],
                   Field(max_length=1000)] | None = None


@router.get("/v1/notifications/dead", tags=["organiser"])
async def dead_letters(org: OrgDep, gw: GatewayDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """Notifications (e-mails, webhooks) of this organisation that failed every attempt."""
    return {"dead": await gw.orders.dead_letters(org, limit)}


@router.post("/v1/notifications/dead/replay", tags=["organiser"])
async def replay_dead_letters(org: OrgDep, gw: GatewayDep, body: ReplayBody | None = None) -> Any:
    """Send this organisation's dead letters again (all, or the listed ids)."""
    return {"replayed": await gw.orders.replay_dead_letters(org, body.ids if body else None)}
