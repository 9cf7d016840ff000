"""Orders and tickets: the deterministic parts shared by checkout (answering the
buyer) and the ledger worker (writing Postgres), so both produce the same ids
and codes without talking to each other."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import DomainError
from gateway.core.sealing import Sealer, event_context
from gateway.orders import ticketcodes
from gateway.sale.layout import EventLayout
from gateway.store.keys import event_key

ORDER_NS = uuid.UUID("6f1d3c2e-8a4b-4c2f-9e51-2b7d9a0c4e13")
KEY_ID = 1


def order_id_for(event_id: int, hold_id: str, buyer: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(ORDER_NS, f"{event_id}|{hold_id}|{buyer}|{idempotency_key}"))


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
                     webhook_secret=raw.get(b"webhook_secret", b"").decode())
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
