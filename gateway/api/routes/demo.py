"""The buyer page (`GET /buy/{event_id}`) and the public event info it draws from.

The page is plain HTML, CSS and JavaScript in `gateway/static/` and talks to the
public buyer API only. `GET /v1/events/{id}/public` answers from Redis (the
event layout and meta hash, through the worker's snapshot), so the page loads
while Postgres is away; venue and start time come from Postgres once per worker
and are left out when it is unreachable.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam
from starlette.responses import Response

from gateway.api.deps import RuntimeDep
from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.services import events
from gateway.services.layout import EventLayout
from gateway.services.orders import event_info
from gateway.services.waiting_room import qkey
from gateway.store.keys import event_key

router = APIRouter(tags=["buyer"])

STATIC = Path(__file__).resolve().parent.parent.parent / "static"
ASSETS = {"buyer.js": "text/javascript; charset=utf-8", "buyer.css": "text/css; charset=utf-8"}
# Same-origin only: the page loads nothing from elsewhere, and frames only our own order page.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
COLD_INFO_TTL_S = 300.0
EventId = Annotated[int, PathParam(ge=1, le=10**18)]


@lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


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


def public_layout(layout: EventLayout) -> dict[str, Any]:
    """The seat map as the page draws it: sections -> rows -> seat labels, with prices."""
    sections: list[dict[str, Any]] = [{"name": name, "rows": []} for name in layout.section_names]
    prices: dict[int, int] = {}
    for s_index, row_label, first, labels in layout.rows:
        row_prices = layout.seat_price[first:first + len(labels)]
        for price in row_prices:
            prices[price] = prices.get(price, 0) + 1
        row: dict[str, Any] = {"label": row_label, "first_index": first, "seats": labels}
        if row_prices and min(row_prices) == max(row_prices):
            row["price_minor"] = row_prices[0]
        else:
            row["seat_prices"] = row_prices
        sections[s_index]["rows"].append(row)
    return {
        "currency": layout.currency, "n_seats": layout.n_seats, "sections": sections,
        "ga": [{"code": t.code, "name": t.name, "capacity": t.capacity, "price_minor": t.price_minor}
               for t in layout.ga.values()],
        "prices": [{"price_minor": p, "seats": n} for p, n in sorted(prices.items(), reverse=True)],
    }


async def _cold_info(runtime: Runtime, event_id: int) -> dict[str, Any]:
    """Venue and start time (Postgres only), cached per worker; empty when Postgres is away."""
    cache: dict[int, tuple[dict[str, Any], float]] = runtime.extras.setdefault("public_event_info", {})
    hit = cache.get(event_id)
    now = time.monotonic()
    if hit is not None and hit[1] > now:
        return hit[0]
    try:
        pool = await runtime.pg()
        row = await pool.fetchrow("SELECT venue, starts_at FROM events WHERE id = $1", event_id)
        info = {"venue": row["venue"], "starts_at": row["starts_at"].isoformat() if row["starts_at"] else None} \
            if row is not None else {}
        ttl = COLD_INFO_TTL_S
    except Exception:  # the page must load without the cold tier
        info, ttl = {}, 5.0
    if len(cache) > 10_000:
        cache.clear()
    cache[event_id] = (info, now + ttl)
    return info


@router.get("/v1/events/{event_id}/public")
async def public_event(event_id: EventId, runtime: RuntimeDep) -> Any:
    """What a buyer may know of an event on sale: name, seat map, prices, sale and queue status."""
    snapshots = runtime.extras["snapshots"]
    prefix = runtime.settings.redis_prefix
    try:
        view = await snapshots.get(event_id)
    except DomainError as err:  # never opened: public only while its pre-queue takes arrivals
        if err.code != "event_not_found":
            raise
        return await _prequeue_event(runtime, event_id)
    bodies: dict[int, dict[str, Any]] = runtime.extras.setdefault("public_layouts", {})
    static = bodies.get(event_id)
    if static is None or static["_layout"] is not view.layout:
        static = {**public_layout(view.layout), "_layout": view.layout}
        if len(bodies) > 1000:
            bodies.clear()
        bodies[event_id] = static
    info = await event_info(runtime.redis, prefix, event_id, runtime.extras.setdefault("public_event_names", {}))
    status, queue_mode, ttl_ms, limit = await runtime.redis.hmget(
        event_key(prefix, event_id, "meta"), "status", "queue_mode", "hold_ttl_ms", "limit")
    cold = await _cold_info(runtime, event_id)
    return {
        "id": event_id, "name": info.name, "venue": cold.get("venue"), "starts_at": cold.get("starts_at"),
        "status": status.decode() if status else view.status or "closed",
        "queue": {"enabled": queue_mode == b"1"},
        "hold_ttl_s": int(ttl_ms) // 1000 if ttl_ms else None,
        "per_buyer_limit": int(limit) if limit else None,
        "max_per_hold": runtime.settings.max_seats_per_hold,
        **{k: v for k, v in static.items() if k != "_layout"},
    }


async def _prequeue_event(runtime: Runtime, event_id: int) -> dict[str, Any]:
    """An event before its sale opens, whose organiser opened the pre-queue: the seat map comes from
    Postgres (it reaches Redis at opening); buyers may join the waiting room already."""
    if await runtime.redis.hget(qkey(runtime.settings.redis_prefix, event_id, "state"), "prequeue") != b"1":
        raise events.not_found(event_id)
    pool = await runtime.pg()
    row = await pool.fetchrow("SELECT name, venue, starts_at, status, hold_ttl_s, per_buyer_limit FROM events "
                              "WHERE id = $1", event_id)
    if row is None:
        raise events.not_found(event_id)
    layout = await events.load_layout(pool, event_id)
    return {
        "id": event_id, "name": row["name"], "venue": row["venue"],
        "starts_at": row["starts_at"].isoformat() if row["starts_at"] else None, "status": row["status"],
        "queue": {"enabled": True, "prequeue": True}, "hold_ttl_s": row["hold_ttl_s"],
        "per_buyer_limit": row["per_buyer_limit"], "max_per_hold": runtime.settings.max_seats_per_hold,
        **public_layout(layout),
    }
