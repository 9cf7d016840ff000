"""The pages: the buyer page (`GET /buy/{event_id}`) and the public event info it draws from, the door
scanner page (`GET /scan`) and the organiser's dashboard (`GET /dashboard/{event_id}`).

Each page is plain HTML, CSS and JavaScript in `gateway/static/` and talks to the public API only.
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


PAGE_HEADERS = {"content-security-policy": PAGE_CSP, "cache-control": "no-cache", "referrer-policy": "no-referrer",
                "x-content-type-options": "nosniff"}
ASSET_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}


@lru_cache(maxsize=16)
def _asset(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def _page(name: str, headers: dict[str, str] = PAGE_HEADERS) -> Response:
    return Response(_asset(name), media_type="text/html; charset=utf-8", headers=headers)


def _static(path: str, table: dict[str, str], name: str) -> Response:
    """One of a page's own files (`table`: name -> media type); anything else is 404."""
    media = table.get(name)
    if media is None:
        raise DomainError("not_found", f"No such resource: {path}{name}.", status=404)
    return Response(_asset(name), media_type=media, headers=ASSET_HEADERS)


@router.get("/buy/{event_id}", include_in_schema=False)
async def buyer_page(event_id: EventId) -> Response:
    return _page("buyer.html")


@router.get("/buy/static/{name}", include_in_schema=False)
async def buyer_asset(name: str) -> Response:
    return _static("/buy/static/", ASSETS, name)


SCANNER_ASSETS = {"scanner.js": "text/javascript; charset=utf-8", "scanner.css": "text/css; charset=utf-8"}
SCANNER_HEADERS = {"content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                               "img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; "
                                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
                   "permissions-policy": "camera=(self)", "cache-control": "no-cache",
                   "referrer-policy": "no-referrer", "x-content-type-options": "nosniff"}


@router.get("/scan", include_in_schema=False)
async def scanner_page() -> Response:
    """The door scanner for phones (docs/scanning.md, "The scanner page"); the device token stays in the page."""
    return _page("scanner.html", SCANNER_HEADERS)


@router.get("/scan/sw.js", include_in_schema=False)
async def scanner_service_worker() -> Response:
    """Keeps the scanner page loadable without a network (its scope covers `/scan` itself)."""
    return Response(_asset("scanner-sw.js"), media_type="text/javascript; charset=utf-8",
                    headers={"service-worker-allowed": "/scan", "cache-control": "no-cache",
                             "x-content-type-options": "nosniff"})


@router.get("/scan/static/{name}", include_in_schema=False)
async def scanner_asset(name: str) -> Response:
    return _static("/scan/static/", SCANNER_ASSETS, name)


DASHBOARD_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


@router.get("/dashboard/{event_id}", include_in_schema=False)
async def dashboard_page(event_id: EventId) -> Response:
    """The organiser's live dashboard (docs/dashboard.md); the API key stays in the page, never in a URL."""
    return _page("dashboard.html")


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    return _static("/dashboard/static/", DASHBOARD_ASSETS, name)


@router.get("/v1/events/{event_id}/public")
async def public_event(event_id: EventId, gw: GatewayDep) -> Any:
    """What a buyer may know of an event on sale: name, seat map, prices, sale and queue status."""
    return await gw.public.public(event_id)
