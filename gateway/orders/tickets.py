"""Orders and tickets: the deterministic parts shared by checkout (answering the
buyer) and the ledger worker (writing Postgres), so both produce the same ids
and codes without talking to each other."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import DomainError
from gateway.core.sealing import Sealer, event_context, event_webhook_context
from gateway.core.tokens import TokenSigner
from gateway.orders import ticketcodes
from gateway.sale.layout import EventLayout
from gateway.store.keys import event_key

ORDER_NS = uuid.UUID("6f1d3c2e-8a4b-4c2f-9e51-2b7d9a0c4e13")
KEY_ID = 1
ORDER_LINK_TTL_S = 600  # the order page link's lifetime (docs/checkout.md, "Orders, refunds")


def order_id_for(event_id: int, hold_id: str, buyer: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(ORDER_NS, f"{event_id}|{hold_id}|{buyer}|{idempotency_key}"))


def order_page_link(signer: TokenSigner, order_id: str, event_id: int, now: float | None = None) -> dict[str, Any]:
    """A short-lived link to the order page (`GET /orders/{id}?token=...`). The order token itself never
    goes into a URL (URLs end up in logs, history and Referer headers); the link's token is of its own
    kind, is good for this one order only, and expires after ORDER_LINK_TTL_S."""
    expires = int((now if now is not None else time.time()) + ORDER_LINK_TTL_S)
    token = signer.sign("l", {"sub": order_id, "ev": event_id, "exp": expires})
    return {"order_page_url": f"/orders/{order_id}?token={token}", "order_page_expires_at": expires}


def ticket_id_hex(order_id: str, serial: int) -> str:
    """md5 of "<order id>:<serial>": a ticket id as 32 hex digits (Postgres reads it as a uuid)."""
    return hashlib.md5(f"{order_id}:{serial}".encode()).hexdigest()


def ticket_id_for(order_id: str, serial: int) -> str:
    return str(uuid.UUID(ticket_id_hex(order_id, serial)))


@dataclass
class EventInfo:
    event_id: int
    name: str
    organisation_id: int
    private_key: bytes
    public_key: bytes
    webhook_url: str = ""
    webhook_secret: str = ""


async def event_info(redis: Any, prefix: str, event_id: int, cache: dict[int, EventInfo] | None = None, *,
                     sealer: Sealer) -> EventInfo:
    """What selling needs to know of an event without Postgres (written when the event opens); the
    signing key is stored sealed (see gateway/core/sealing.py) and unsealed here."""
    if cache is not None and event_id in cache:
        return cache[event_id]
    raw = await redis.hgetall(event_key(prefix, event_id, "info"))
    if not raw:
        raise DomainError("event_not_found", "No such event on sale.", details={"event_id": event_id})
    info = EventInfo(event_id=event_id, name=raw[b"name"].decode(), organisation_id=int(raw[b"organisation_id"]),
                     private_key=sealer.unseal(raw[b"signing_private"], context=event_context(event_id)), public_key=raw[b"signing_public"],
                     webhook_url=raw.get(b"webhook_url", b"").decode(),
                     webhook_secret=(sealer.unseal(raw[b"webhook_sealed"], context=event_webhook_context(event_id)).decode()
                                     if raw.get(b"webhook_sealed") else raw.get(b"webhook_secret", b"").decode()))
    if cache is not None:
        cache[event_id] = info
    return info


def ticket_rows(*, event_id: int, order_id: str, confirmed: dict[str, Any], private_key: bytes,
                layout: EventLayout | None = None) -> list[dict[str, Any]]:
    """One ticket per seat, then per GA unit, serials from the confirm result."""
    seats = confirmed.get("seats") or []
    ga = confirmed.get("ga") or {}
    kinds: list[tuple[int | None, str | None]] = [(s, None) for s in seats]
    for code in sorted(ga):
        kinds += [(None, code)] * int(ga[code])
    rows = []
    for i, (seat, ga_type) in enumerate(kinds):
        serial = int(confirmed["serial_start"]) + i
        rows.append({
            "ticket_id": ticket_id_for(order_id, serial), "serial": serial, "seat_index": seat,
            "seat": layout.seat_labels[seat] if layout is not None and seat is not None else None,
            "type": ga_type,
            "code": ticketcodes.encode(private_key=private_key, key_id=KEY_ID, event_id=event_id, serial=serial),
        })
    return rows


def order_total(layout: EventLayout, seats: list[int], ga: dict[str, int]) -> int:
    return sum(layout.seat_price[i] for i in seats) + sum(layout.ga[c].price_minor * int(n) for c, n in ga.items())


def public_ticket(row: dict[str, Any]) -> dict[str, Any]:
    return {"ticket_id": row["ticket_id"], "seat": row.get("seat"), "type": row.get("type"), "code": row["code"],
            "serial": row["serial"]}
