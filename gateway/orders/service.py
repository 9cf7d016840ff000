"""Orders: the buyer's view of an order (order token), the organiser's list and
refunds, and notification dead letters.

An order is read from Postgres once the ledger has written it, else from Redis
(the sale is final there first), so a buyer sees their tickets during a
Postgres outage too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import orjson

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.core.tokens import TokenSigner
from gateway.db.replica import read_from
from gateway.orders import notify, ticketcodes
from gateway.orders.confirmations import Confirmations
from gateway.orders.refunds import order_not_found, refund_order
from gateway.orders.tickets import KEY_ID, event_info, order_page_link, public_ticket, ticket_rows
from gateway.organisers import events
from gateway.providers.payments import PaymentProvider
from gateway.sale.snapshots import SnapshotManager
from gateway.store.keys import event_key

log = logging.getLogger("flashgate.orders")

# What "Postgres is unreachable" looks like from asyncpg: connection refused or reset (OSError),
# the pool's connect timeout, a connection lost mid-query, a server shutting down.
PG_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
           asyncpg.CannotConnectNowError)


class Orders:
    def __init__(self, runtime: Runtime, *, signer: TokenSigner, snapshots: SnapshotManager,
                 provider: PaymentProvider, confirmations: Confirmations) -> None:
        self.runtime = runtime
        self.signer = signer
        self.snapshots = snapshots
        self.provider = provider
        self.confirmations = confirmations
        self._keys: dict[int, bytes] = {}  # event id -> its ticket-signing key (never changes for an event)

    # -- buyer -----------------------------------------------------------------------------
    def event_of(self, order_id: str, order_token: str | None, kind: str = "o") -> int:
        """The event of an order, if `order_token` is this order's token (from checkout), or with
        `kind="l"` an unexpired order page link of this order."""
        if not order_token:
            if kind == "l":
                raise DomainError("unauthorized", "Open the order page with the link from your order; it is "
                                  "valid for a few minutes.")
            raise DomainError("unauthorized", "Send the order token from checkout as `Authorization: Bearer <token>`.")
        claims = self.signer.verify(order_token, kind)
        if claims.get("sub") != order_id:
            raise DomainError("forbidden", "This order token belongs to another order.")
        return int(claims["ev"])

    async def for_buyer(self, order_id: str, order_token: str | None) -> dict[str, Any]:
        """The order and its tickets for the holder of its order token, with a fresh order page link."""
        event_id = self.event_of(order_id, order_token)
        order = await self.load(order_id, event_id)
        return {**order, **order_page_link(self.signer, order_id, event_id)}

    async def for_page(self, order_id: str, link_token: str | None) -> dict[str, Any]:
        """The order for the order page, opened with a short-lived link (never with the order token)."""
        return await self.load(order_id, self.event_of(order_id, link_token, kind="l"))

    async def load(self, order_id: str, event_id: int) -> dict[str, Any]:
        """From Postgres when the ledger has written it, else from Redis."""
        try:
            order_uuid = uuid.UUID(order_id)
        except ValueError:
            raise order_not_found(order_id) from None
        try:
            found = await self._from_postgres(order_uuid, order_id, event_id)
        except PG_DOWN as exc:  # Postgres away: the Redis copy answers
            log.info("order read from Redis: Postgres unreachable", extra={"error": repr(exc)})
            found = None
        return found if found is not None else await self._from_redis(order_id, event_id)

    async def _from_postgres(self, order_uuid: uuid.UUID, order_id: str, event_id: int) -> dict[str, Any] | None:
        """One query (the order, its tickets and their seat labels), and the event's signing key, read
        once per process: a buyer fetches their order right after paying, at the sale's rate."""
        pool = await self.runtime.pg()
        rows = await pool.fetch(
            """SELECT o.status, o.total_minor, o.currency, o.created_at, t.id AS ticket_id, t.ticket_type, t.serial,
                      t.status AS ticket_status, s.label
               FROM orders o
               LEFT JOIN tickets t ON t.order_id = o.id
               LEFT JOIN seats s ON s.event_id = o.event_id AND s.seat_index = t.seat_index
               WHERE o.id = $1 AND o.event_id = $2
               ORDER BY t.serial""", order_uuid, event_id)
        if not rows:
            return None
        key = self._keys.get(event_id)
        if key is None:
            key = await pool.fetchval("SELECT signing_private_key FROM events WHERE id = $1", event_id)
            if key is not None:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[event_id] = key
        row = rows[0]
        return {"order_id": order_id, "event_id": event_id, "status": row["status"],
                "total_minor": row["total_minor"], "currency": row["currency"].strip(),
                "created_at": row["created_at"].isoformat(),
                "tickets": [{"ticket_id": str(t["ticket_id"]), "seat": t["label"],
                             "type": t["ticket_type"], "serial": t["serial"],
                             "code": ticketcodes.encode(private_key=key, key_id=KEY_ID, event_id=event_id,
                                                        serial=t["serial"]),
                             "status": t["ticket_status"]} for t in rows if t["ticket_id"] is not None]}

    async def _from_redis(self, order_id: str, event_id: int) -> dict[str, Any]:
        rt = self.runtime
        raw = await rt.redis.hget(event_key(rt.prefix, event_id, "orders"), order_id)
        if raw is None:
            raise order_not_found(order_id)
        confirmed = orjson.loads(raw)
        view = await self.snapshots.get(event_id)
        info = await event_info(rt.redis, rt.prefix, event_id, sealer=rt.sealer)
        rows = ticket_rows(event_id=event_id, order_id=order_id, confirmed=confirmed, private_key=info.private_key,
                           layout=view.layout)
        status = "refunded" if confirmed.get("voided_at_ms") else "paid"
        return {"order_id": order_id, "event_id": event_id, "status": status, "currency": view.layout.currency,
                "tickets": [{**public_ticket(r), "status": "void" if status == "refunded" else "valid"}
                            for r in rows]}

    # -- organiser -------------------------------------------------------------------------
    async def list(self, organisation_id: int, event_id: int, *, limit: int, offset: int) -> dict[str, Any]:
        """The event's orders as Postgres has them (written by the ledger, so already a moment behind the
        sale): from the read replica when one is set and keeps up (docs/scaling.md, "Postgres"); `read_from`
        says which server answered and how far behind it was."""
        await events.check_owner_for_reads(self.runtime, organisation_id=organisation_id, event_id=event_id)

        async def read(pool: asyncpg.Pool) -> list[asyncpg.Record]:
            return await pool.fetch(
                """SELECT o.*, (SELECT count(*) FROM tickets t WHERE t.order_id = o.id)::int AS tickets
                   FROM orders o WHERE o.event_id = $1 ORDER BY o.created_at DESC, o.id LIMIT $2 OFFSET $3""",
                event_id, limit, offset)

        rows, state = await self.runtime.reads.run(read)
        return {"orders": [{"order_id": str(r["id"]), "status": r["status"], "buyer": r["buyer"],
                            "email": r["email"], "total_minor": r["total_minor"], "currency": r["currency"].strip(),
                            "tickets": r["tickets"], "created_at": r["created_at"].isoformat()} for r in rows],
                "read_from": read_from(state)}

    async def refund(self, organisation_id: int, order_id: str, reason: str | None) -> dict[str, Any]:
        rt = self.runtime

        async def notify_refund(event_id: int, payload: dict[str, Any]) -> None:
            try:
                info = await event_info(rt.redis, rt.prefix, event_id, sealer=rt.sealer)
                await self.confirmations.webhook(info=info, event_type="order.refunded", body=payload)
            except Exception as exc:  # the refund is done; a webhook never undoes it
                log.warning("refund webhook not queued", extra={"order_id": order_id, "error": repr(exc)})

        return await refund_order(pool=await rt.pg(), scripts=rt.scripts, provider=self.provider, prefix=rt.prefix,
                                  organisation_id=organisation_id, order_id=order_id, reason=reason,
                                  notify_refund=notify_refund, offer_ttl_ms=rt.settings.waitlist_offer_ttl_s * 1000)

    async def dead_letters(self, organisation_id: int, limit: int) -> list[dict[str, Any]]:
        return await notify.list_dead(self.runtime, limit=limit, org_id=organisation_id)

    async def replay_dead_letters(self, organisation_id: int, ids: list[str] | None) -> int:
        return await notify.replay_dead(self.runtime, ids=ids, org_id=organisation_id)
