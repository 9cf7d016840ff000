"""What a gateway worker knows of an event's tickets, for scanning: serial -> order, seat or type,
holder, void; folded from the event's ledger stream.

Every sale appends one `order` entry (its serial range, seats, GA units, the buyer's e-mail) and
every refund one `void` entry to the event's ledger stream, in the same Lua call that makes them
final, and the stream is never trimmed (docs/checkout.md). Reading it forward from the last entry
seen (XRANGE, exclusive start) is therefore a complete, ordered, incremental view of the tickets,
the same on every worker. The manifest's `version` is the number of order and void entries folded:
equal on every worker for the same prefix of the stream, so a device may fetch `?since=` from any.

Costs: one `Ticket` per ticket (~100 B), one log record per order or void. A catch-up reads every
entry after the last one seen, scans included (they share the stream), in pages of `PAGE`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.orders.tickets import ticket_id_for
from gateway.sale.layout import EventLayout

PAGE = 500  # entries per XRANGE; the loop yields between pages


@dataclass(slots=True)
class Ticket:
    serial: int
    order_id: str
    seat_index: int | None
    ga_type: str | None
    holder: str | None
    voided_at_ms: int | None = None
    _id: str | None = None

    @property
    def ticket_id(self) -> str:
        if self._id is None:
            self._id = ticket_id_for(self.order_id, self.serial)
        return self._id


@dataclass
class TicketRegistry:
    """The tickets of one event, as folded so far. Not thread-safe; one per worker and event."""

    layout: EventLayout
    tickets: dict[int, Ticket] = field(default_factory=dict)
    orders: dict[str, list[int]] = field(default_factory=dict)
    # One record per folded order / void entry: (kind, serials). version == len(log).
    log: list[tuple[str, list[int]]] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)  # ascending
    last_id: bytes = b"0-0"

    @property
    def version(self) -> int:
        return len(self.log)

    def seat_label(self, ticket: Ticket) -> str | None:
        if ticket.seat_index is None:
            return None
        labels = self.layout.seat_labels
        return labels[ticket.seat_index] if 0 <= ticket.seat_index < len(labels) else None

    def section(self, ticket: Ticket) -> str | None:
        label = self.seat_label(ticket)
        return label.split("-", 1)[0] if label else None  # section names never contain "-"

    def rule_key(self, ticket: Ticket) -> str:
        """The key of the ticket's type in the scan rules: `ga:<code>` or `sec:<section name>`."""
        return f"ga:{ticket.ga_type}" if ticket.ga_type is not None else f"sec:{self.section(ticket)}"

    def data(self, ticket: Ticket) -> dict[str, Any]:
        """What the manifest seals and the scan answer shows."""
        return {"seat": self.seat_label(ticket), "section": self.section(ticket), "type": ticket.ga_type,
                "holder": ticket.holder}

    def fold(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Apply ledger entries (in stream order, after `last_id`); returns how many changed the registry."""
        changed = 0
        for entry_id, fields in entries:
            self.last_id = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
            kind = fields.get(b"k")
            if kind == b"order":
                self._order(orjson.loads(fields[b"d"]), orjson.loads(fields.get(b"o") or b"{}"))
                changed += 1
            elif kind == b"void":
                self._void(orjson.loads(fields[b"d"]))
                changed += 1
        return changed

    def _order(self, d: dict[str, Any], o: Any) -> None:
        order_id = str(d["order_id"])
        seats = d.get("seats") or []
        ga = d.get("ga") or {}
        kinds: list[tuple[int | None, str | None]] = [(int(s), None) for s in seats]
        for code in sorted(ga):  # the order of gateway/orders/tickets.py ticket_rows
            kinds += [(None, code)] * int(ga[code])
        start = int(d["serial_start"])
        holder = o.get("email") if isinstance(o, dict) else None
        serials = []
        for i, (seat, ga_type) in enumerate(kinds):
            serial = start + i
            self.tickets[serial] = Ticket(serial, order_id, seat, ga_type, holder if isinstance(holder, str) else None)
            serials.append(serial)
        self.orders[order_id] = serials
        self.log.append(("t", serials))

    def _void(self, d: dict[str, Any]) -> None:
        serials = self.orders.get(str(d.get("order_id")), [])
        at = d.get("voided_at_ms")
        for serial in serials:
            ticket = self.tickets[serial]
            if ticket.voided_at_ms is None:
                ticket.voided_at_ms = int(at) if at is not None else 0
                bisect.insort(self.revoked, serial)
        self.log.append(("v", list(serials)))

    def changes(self, since: int | None) -> tuple[bool, list[int], list[int]]:
        """(full, serials of tickets, revoked serials): everything, or what changed after `since`."""
        if since is None or since < 0 or since > self.version:
            return True, sorted(self.tickets), list(self.revoked)
        tickets: set[int] = set()
        revoked: set[int] = set()
        for kind, serials in self.log[since:]:
            (tickets if kind == "t" else revoked).update(serials)
        return False, sorted(tickets), sorted(revoked)
