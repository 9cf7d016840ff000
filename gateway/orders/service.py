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
from gateway.orders import notify, ticketcodes
from gateway.orders.confirmations import Confirmations
from gateway.orders.refunds import order_not_found, refund_order
from gateway.orders.tickets import KEY_ID, event_info, public_ticket, ticket_rows
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

    # -- buyer -----------------------------------------------------------------------------
    def event_of(self, order_id: str, order_token: str | None) -> int:
        """The event of an order, if `order_token` is this order's token (from checkout)."""
        if not order_token:
            raise DomainError("unauthorized", "Send the order token from checkout as `Authorization: Bearer <token>`.")
        claims = self.signer.verify(order_token, "o")
        if claims.get("sub") != order_id:
            raise DomainError("forbidden", "This order token belongs to another order.")
        return int(claims["ev"])

    async def for_buyer(self, order_id: str, order_token: str | None) -> dict[str, Any]:
        return await self.load(order_id, self.event_of(order_id, order_token))

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
        pool = await self.runtime.pg()
        row = await pool.fetchrow("SELECT * FROM orders WHERE id = $1 AND event_id = $2", order_uuid, event_id)
        if row is None:
            return None
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
        pool = await self.runtime.pg()
        await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)
        rows = await pool.fetch(
            """SELECT o.*, (SELECT count(*) FROM tickets t WHERE t.order_id = o.id)::int AS tickets
               FROM orders o WHERE o.event_id = $1 ORDER BY o.created_at DESC, o.id LIMIT $2 OFFSET $3""",
            event_id, limit, offset)
        return {"orders": [{"order_id": str(r["id"]), "status": r["status"], "buyer": r["buyer"],
                            "email": r["email"], "total_minor": r["total_minor"], "currency": r["currency"].strip(),
                            "tickets": r["tickets"], "created_at": r["created_at"].isoformat()} for r in rows]}

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
                                  notify_refund=notify_refund)

    async def dead_letters(self, organisation_id: int, limit: int) -> list[dict[str, Any]]:
        return await notify.list_dead(self.runtime, limit=limit, org_id=organisation_id)

    async def replay_dead_letters(self, organisation_id: int, ids: list[str] | None) -> int:
        return await notify.replay_dead(self.runtime, ids=ids, org_id=organisation_id)
