"""Orders: the buyer's view (order token), the order page with QR codes, and the
organiser's list and refunds."""

from __future__ import annotations

import html
import uuid
from typing import Annotated, Any

import orjson
import segno
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse

from gateway.api.deps import OrgDep, RuntimeDep
from gateway.core.errors import DomainError
from gateway.services import events as events_service
from gateway.services import notify, ticketcodes
from gateway.services.confirmations import send_webhook
from gateway.services.orders import KEY_ID, event_info, public_ticket, ticket_rows
from gateway.services.refunds import order_not_found, refund_order
from gateway.services.snapshots import SnapshotManager
from gateway.store.keys import event_key

router = APIRouter(tags=["orders"])


def _token(request: Request, query_token: str | None) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else query_token
    if not token:
        raise DomainError("unauthorized", "Send the order token from checkout as `Authorization: Bearer <token>`.")
    return token


async def load_order(runtime: Any, order_id: str, event_id: int) -> dict[str, Any]:
    """From Postgres when the ledger has written it, else from Redis (the sale is final there first)."""
    try:
        order_uuid = uuid.UUID(order_id)
    except ValueError:
        raise order_not_found(order_id) from None
    try:
        pool = await runtime.pg()
        row = await pool.fetchrow("SELECT * FROM orders WHERE id = $1 AND event_id = $2", order_uuid, event_id)
        if row is not None:
            tickets = await pool.fetch("SELECT * FROM tickets WHERE order_id = $1 ORDER BY serial", order_uuid)
            labels = await pool.fetch(
                "SELECT seat_index, label FROM seats WHERE event_id = $1 AND seat_index = ANY($2::int[])", event_id,
                [t["seat_index"] for t in tickets if t["seat_index"] is not None])
            label_of = {r["seat_index"]: r["label"] for r in labels}
            key = await pool.fetchval("SELECT signing_private_key FROM events WHERE id = $1", event_id)
            return {"order_id": order_id, "event_id": event_id, "status": row["status"],
                    "total_minor": row["total_minor"], "currency": row["currency"].strip(),
                    "created_at": row["created_at"].isoformat(),
                    "tickets": [{"ticket_id": str(t["id"]), "seat": label_of.get(t["seat_index"]),
                                 "type": t["ticket_type"], "serial": t["serial"],
                                 "code": ticketcodes.encode(private_key=key, key_id=KEY_ID, event_id=event_id,
                                                            serial=t["serial"]),
                                 "status": t["status"]} for t in tickets]}
    except (OSError, DomainError):
        raise
    except Exception:  # Postgres away: the Redis copy answers
        pass
    raw = await runtime.redis.hget(event_key(runtime.settings.redis_prefix, event_id, "orders"), order_id)
    if raw is None:
        raise order_not_found(order_id)
    confirmed = orjson.loads(raw)
    snapshots: SnapshotManager = runtime.extras["snapshots"]
    view = await snapshots.get(event_id)
    info = await event_info(runtime.redis, runtime.settings.redis_prefix, event_id)
    rows = ticket_rows(event_id=event_id, order_id=order_id, confirmed=confirmed, private_key=info.private_key,
                       layout=view.layout)
    status = "refunded" if confirmed.get("voided_at_ms") else "paid"
    return {"order_id": order_id, "event_id": event_id, "status": status, "currency": view.layout.currency,
            "tickets": [{**public_ticket(r), "status": "void" if status == "refunded" else "valid"} for r in rows]}


def _claims(request: Request, order_id: str, token: str | None) -> int:
    claims = request.app.state.runtime.extras["signer"].verify(_token(request, token), "o")
    if claims.get("sub") != order_id:
        raise DomainError("forbidden", "This order token belongs to another order.")
    return int(claims["ev"])


@router.get("/v1/orders/{order_id}")
async def get_order(order_id: str, request: Request, runtime: RuntimeDep,
                    token: Annotated[str | None, Query()] = None) -> Any:
    return await load_order(runtime, order_id, _claims(request, order_id, token))


@router.get("/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
async def order_page(order_id: str, request: Request, runtime: RuntimeDep,
                     token: Annotated[str | None, Query()] = None) -> HTMLResponse:
    order = await load_order(runtime, order_id, _claims(request, order_id, token))
    cards = []
    for t in order["tickets"]:
        qr = segno.make(t["code"], error="m")
        svg = qr.svg_inline(scale=4, dark="#111", light="#fff")
        label = html.escape(t["seat"] or t["type"] or "Ticket")
        cards.append(f'<figure class="ticket" data-status="{t["status"]}">{svg}<figcaption><b>{label}</b>'
                     f'<br><code>{html.escape(t["code"])}</code><br>{t["status"]}</figcaption></figure>')
    body = (f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>Order {html.escape(order_id)}</title><style>body{{font-family:system-ui;margin:1rem}}"
            f".ticket{{display:inline-block;border:1px solid #ccc;border-radius:8px;padding:.5rem;margin:.5rem;"
            f"max-width:280px}}code{{word-break:break-all;font-size:.7rem}}</style></head><body>"
            f"<h1>Your tickets</h1><p>Order <code>{html.escape(order_id)}</code> · {order['status']} · "
            f"{order.get('total_minor', '')} {order['currency']}</p>{''.join(cards)}</body></html>")
    return HTMLResponse(body)


@router.get("/v1/events/{event_id}/orders", tags=["organiser"])
async def list_orders(event_id: int, org: OrgDep, runtime: RuntimeDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0)] = 0) -> Any:
    pool = await runtime.pg()
    await events_service.get_event(pool, organisation_id=org, event_id=event_id)
    rows = await pool.fetch(
        """SELECT o.*, (SELECT count(*) FROM tickets t WHERE t.order_id = o.id)::int AS tickets
           FROM orders o WHERE o.event_id = $1 ORDER BY o.created_at DESC, o.id LIMIT $2 OFFSET $3""",
        event_id, limit, offset)
    return {"orders": [{"order_id": str(r["id"]), "status": r["status"], "buyer": r["buyer"], "email": r["email"],
                        "total_minor": r["total_minor"], "currency": r["currency"].strip(), "tickets": r["tickets"],
                        "created_at": r["created_at"].isoformat()} for r in rows]}


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] | None = None


@router.post("/v1/orders/{order_id}/refund", tags=["organiser"])
async def refund(order_id: str, org: OrgDep, runtime: RuntimeDep, body: RefundBody | None = None) -> Any:
    async def notify_refund(event_id: int, payload: dict[str, Any]) -> None:
        try:
            info = await event_info(runtime.redis, runtime.settings.redis_prefix, event_id)
            await send_webhook(runtime, info=info, event_type="order.refunded", body=payload)
        except Exception:  # the refund is done; a webhook never undoes it
            pass

    return await refund_order(pool=await runtime.pg(), scripts=runtime.extras["scripts"],
                              provider=runtime.extras["payments"], prefix=runtime.settings.redis_prefix,
                              organisation_id=org, order_id=order_id, reason=body.reason if body else None,
                              notify_refund=notify_refund)


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1000)] | None = None


@router.get("/v1/notifications/dead", tags=["organiser"])
async def dead_letters(org: OrgDep, runtime: RuntimeDep,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """Notifications (e-mails, webhooks) of this organisation that failed every attempt."""
    return {"dead": await notify.list_dead(runtime, limit=limit, org_id=org)}


@router.post("/v1/notifications/dead/replay", tags=["organiser"])
async def replay_dead_letters(org: OrgDep, runtime: RuntimeDep, body: ReplayBody | None = None) -> Any:
    """Send this organisation's dead letters again (all, or the listed ids)."""
    return {"replayed": await notify.replay_dead(runtime, ids=body.ids if body else None, org_id=org)}
