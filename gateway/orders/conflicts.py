"""Sales Postgres refuses: a Redis restored from older data (a failover to a replica that had not
received the latest writes, a restart from an old snapshot) forgets confirmed sales the ledger
already wrote, and may sell one of their seats, or issue one of their ticket serials, again.

Postgres holds the first sale: `uq_tickets_live_seat` and `uq_tickets_serial` refuse the second
ticket. The ledger writer checks an order's tickets before writing them (`refuse`): when one
collides with another order's, the whole order is refused — its order row and captured payment are
written, no ticket, and a `sale_conflicts` row names it — and the batch goes on (the ledger never
stops on it). After the commit the ledger worker `settle`s: the event's serial counter in Redis is
moved past Postgres's highest serial (so new sales stop colliding), the payment is refunded through
the provider with the order's refund key (`<order id>:refund`, the key an organiser's refund uses:
one refund whatever happens), the order becomes `refunded` with its refund payment, and the buyer
(e-mail) and the organiser (`order.refunded` webhook, `reason: "seat_conflict"`) are told. A refund
the provider cannot make now is tried again every ledger round. The audit reports every refused sale.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import asyncpg

from gateway.core.runtime import Runtime
from gateway.orders import notify
from gateway.orders.confirmations import Confirmations
from gateway.orders.tickets import event_info
from gateway.store.keys import event_key

log = logging.getLogger("flashgate.ledger")

REASON = "seat_conflict"
FREE_PROVIDER = "free"


async def refuse(conn: asyncpg.Connection, event_id: int, tickets: list[tuple], stream_ids: dict[str, str]
                 ) -> list[tuple]:
    """The tickets Postgres takes, in order; every order with a ticket whose serial another order
    has, or whose seat another order's live ticket has, loses all of its tickets and is recorded in
    `sale_conflicts` (once: a redelivered entry is refused again, the same row). Ticket tuples are
    the ledger writer's: `(id, order_id, event_id, serial, seat_index, ga_type, at)`."""
    if not tickets:
        return tickets
    rows = await conn.fetch(  # two index lookups per ticket (uq_tickets_serial, uq_tickets_live_seat), never a scan
        """SELECT DISTINCT u.o::text AS order_id, c.other
           FROM unnest($2::text[]::uuid[], $3::int[], $4::int[]) AS u(o, s, x)
           CROSS JOIN LATERAL (
               SELECT t.order_id AS other FROM tickets t WHERE t.event_id = $1 AND t.serial = u.s
               UNION ALL
               SELECT t.order_id FROM tickets t WHERE t.event_id = $1 AND t.seat_index = u.x AND t.status = 'valid'
           ) c
           WHERE c.other <> u.o""",
        event_id, [t[1] for t in tickets], [t[3] for t in tickets], [t[4] for t in tickets])
    if not rows:
        return tickets
    others: dict[str, set[uuid.UUID]] = {}
    for r in rows:
        others.setdefault(r["order_id"], set()).add(r["other"])
    refused = [t for t in tickets if str(t[1]) in others]
    mine: dict[str, list[tuple]] = {}
    for t in refused:
        mine.setdefault(str(t[1]), []).append(t)
    await conn.executemany(
        """INSERT INTO sale_conflicts (order_id, event_id, stream_id, seats, serials, other_orders)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING""",
        [(uuid.UUID(oid), event_id, stream_ids.get(oid, ""), [t[4] for t in ts if t[4] is not None],
          [t[3] for t in ts], sorted(others[oid])) for oid, ts in mine.items()])
    for oid, ts in mine.items():
        log.error("sale refused by Postgres: its tickets collide with a sale Redis no longer knows; "
                  "the order is refunded", extra={"event_id": event_id, "order_id": oid,
                                                  "other_orders": sorted(str(o) for o in others[oid]),
                                                  "seats": [t[4] for t in ts if t[4] is not None],
                                                  "serials": [t[3] for t in ts], "entry": stream_ids.get(oid)})
    return [t for t in tickets if str(t[1]) not in others]


async def bump_serial(runtime: Runtime, pool: asyncpg.Pool, event_id: int) -> None:
    """Move the event's ticket serial counter in Redis past the highest serial Postgres holds.
    INCRBY only adds, so serials handed out meanwhile by sales stay distinct."""
    top = await pool.fetchval("SELECT max(serial) FROM tickets WHERE event_id = $1", event_id) or 0
    key = event_key(runtime.prefix, event_id, "serial")
    current = int(await runtime.redis.get(key) or 0)
    if current < top:
        await runtime.redis.incrby(key, top - current)
        log.warning("ticket serial counter moved past Postgres's", extra={"event_id": event_id, "from": current,
                                                                          "to": top})


async def settle(runtime: Runtime, provider: Any, *, limit: int = 100, budget_s: float = 1.0) -> int:
    """Refund the refused sales not refunded yet (oldest first); returns how many were refunded.
    No refund is started after `budget_s` (each is bounded by the provider's own timeouts), so the
    ledger worker calling this is held back briefly at most; what is left, or what the provider
    cannot refund now, waits for the next call."""
    deadline = time.monotonic() + budget_s
    pool = await runtime.pg()
    rows = await pool.fetch(
        """SELECT c.order_id, c.event_id, c.seats, c.other_orders, o.total_minor, o.currency, o.email,
                  p.provider_ref AS ref, p.provider
           FROM sale_conflicts c JOIN orders o ON o.id = c.order_id
           LEFT JOIN LATERAL (SELECT provider_ref, provider FROM payments p WHERE p.order_id = o.id
                              AND p.kind = 'capture' LIMIT 1) p ON true
           WHERE c.refunded_at IS NULL ORDER BY c.detected_at LIMIT $1""", limit)
    done = 0
    for event_id in sorted({r["event_id"] for r in rows}):
        await bump_serial(runtime, pool, event_id)
    for row in rows:
        if time.monotonic() > deadline:
            break
        order_id = str(row["order_id"])
        try:
            if row["ref"] is None or row["provider"] == FREE_PROVIDER:
                refund_ref, provider_name = f"{row['ref'] or order_id}-refund", FREE_PROVIDER
            else:
                refund_ref = (await provider.refund(idempotency_key=f"{order_id}:refund", payment_id=row["ref"],
                                                    amount_minor=row["total_minor"])).refund_id
                provider_name = row["provider"]
        except Exception as exc:  # provider away or refusing: the next round tries again
            log.warning("refund of a refused sale failed; tried again next round",
                        extra={"event_id": row["event_id"], "order_id": order_id, "error": repr(exc)})
            continue
        currency = row["currency"].strip()
        async with pool.acquire() as conn, conn.transaction():
            mine = await conn.execute("UPDATE sale_conflicts SET refund_ref = $2, refunded_at = now() "
                                      "WHERE order_id = $1 AND refunded_at IS NULL", row["order_id"], refund_ref)
            if mine != "UPDATE 1":
                continue  # another ledger worker settled it meanwhile (and told the buyer)
            await conn.execute("UPDATE orders SET status = 'refunded', refunded_at = now() WHERE id = $1 "
                               "AND status = 'paid'", row["order_id"])
            await conn.execute(
                """INSERT INTO payments (id, order_id, hold_id, provider, provider_ref, kind, amount_minor, currency,
                                         status, created_at)
                   SELECT $1::uuid, o.id, o.hold_id, $2, $3, 'refund', o.total_minor, o.currency, 'succeeded', now()
                   FROM orders o WHERE o.id = $4 ON CONFLICT DO NOTHING""",
                _payment_uuid(order_id), provider_name, refund_ref, row["order_id"])
        done += 1
        log.info("refused sale refunded", extra={"event_id": row["event_id"], "order_id": order_id,
                                                 "refund_id": refund_ref})
        await _tell(runtime, row, refund_ref, currency)
    return done


async def _tell(runtime: Runtime, row: asyncpg.Record, refund_ref: str, currency: str) -> None:
    """The buyer's e-mail and the organiser's `order.refunded` webhook; never undoes the refund."""
    order_id = str(row["order_id"])
    try:
        info = await event_info(runtime.redis, runtime.prefix, row["event_id"], sealer=runtime.sealer)
        if row["email"]:
            await notify.enqueue(runtime, kind="email", org_id=info.organisation_id, payload=refused_sale_email(
                to=row["email"], order_id=order_id, event_name=info.name))
        await Confirmations(runtime).webhook(info=info, event_type="order.refunded", body={
            "order_id": order_id, "event_id": row["event_id"], "status": "refunded", "refund_id": refund_ref,
            "amount_minor": row["total_minor"], "currency": currency, "reason": REASON})
    except Exception as exc:
        log.warning("refused sale: notification not queued", extra={"order_id": order_id, "error": repr(exc)})


def refused_sale_email(*, to: str, order_id: str, event_name: str) -> dict[str, Any]:
    """The buyer's e-mail: the order could not be honoured and was refunded in full."""
    text = (f"We are sorry: your order {order_id} for {event_name} could not be honoured. A ticket it "
            "included had already been sold to someone else. Your payment has been refunded in full, and "
            "the tickets of this order are not valid.")
    return {"to": to, "subject": f"Your order {order_id} for {event_name} was refunded", "text": text}


def _payment_uuid(order_id: str) -> str:
    from gateway.workers.ledger import payment_uuid

    return payment_uuid(order_id, "refund")


__all__ = ["REASON", "bump_serial", "refuse", "refused_sale_email", "settle"]
