"""The buyer page (`GET /buy/{event_id}`) and the public event info it draws from.

The page is plain HTML, CSS and JavaScript in `gateway/static/` and talks to the
public buyer API only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import Response

from gateway.api.deps import GatewayDep
from gateway.core.errors import DomainError
from gateway.core.resources import STATIC_DIR

router = APIRouter(tags=["buyer"])

ASSETS = {"buyer.js": "text/javascript; charset=utf-8", "buyer.css": "text/css; charset=utf-8"}
# Same-origin only: the page loads nothing from elsewhere, and frames only our own order page.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
EventId = Annotated[int, Path(ge=1, le=10**18)]


@lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@router.get("/buy/{event_id}", include_in_schema=False)
async def buyer_page(event_id: EventId) -> Response:
    return Response(_asset("buyer.html"), media_type="text/html; charset=utf-8",
                    headers={"content-security-policy": PAGE_CSP, "cache-control": "no-cache",
                             "referrer-policy": "no-referrer", "x-content-type-options": "nosniff"})


@router.get("/buy/static/{name}", include_in_schema=False)
async def buyer_asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise DomainError("not_found", f"No such resource: /buy/static/{name}.", status=404)
    return Response(_asset(name), media_type=media,
                    headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})


@router.get("/v1/events/{event_id}/public")
async def public_event(event_id: EventId, gw: GatewayDep) -> Any:
    """What a buyer may know of an event on sale: name, seat map, prices, sale and queue status."""
    return await gw.public.public(event_id)
