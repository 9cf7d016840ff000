"""Refunds (organiser): money back through the provider, tickets void, seats on sale again."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from gateway.core.errors import DomainError
from gateway.providers.payments import PaymentRejected, ProviderUnavailable
from gateway.sale import inventory
from gateway.store.keys import ledger_dirty_set


def order_not_found(order_id: str) -> DomainError:
    return DomainError("order_not_found", "No such order.", details={"order_id": order_id})


async def refund_order(*, pool: asyncpg.Pool, scripts: Any, provider: Any, prefix: str, organisation_id: int,
                       order_id: str, reason: str | None = None, notify_refund: Any = None) -> dict[str, Any]:
    try:
        order_uuid = uuid.UUID(order_id)
    except ValueError:
        raise order_not_found(order_id) from None
    row = await pool.fetchrow(
        """SELECT o.id, o.event_id, o.status, o.total_minor, o.currency, e.organisation_id,
                  (SELECT provider_ref FROM payments p WHERE p.order_id = o.id AND p.kind = 'capture' LIMIT 1) AS ref
           FROM orders o JOIN events e ON e.id = o.event_id WHERE o.id = $1""", order_uuid)
    if row is None or row["organisation_id"] != organisation_id:
        raise order_not_found(order_id)
    if row["ref"] is None:
        raise DomainError("invalid_state", "This order has no captured payment to refund.",
                          details={"order_id": order_id})
    try:
        refund = await provider.refund(idempotency_key=f"{order_id}:refund", payment_id=row["ref"],
                                       amount_minor=row["total_minor"])
    except ProviderUnavailable as exc:
        raise exc.to_domain() from None
    except PaymentRejected as exc:
        raise exc.to_domain() from None
    voided = await inventory.void(scripts=scripts, prefix=prefix, event_id=row["event_id"], order_id=order_id,
                                  refund={"refund_id": refund.refund_id, "payment_id": row["ref"],
                                          "amount_minor": row["total_minor"], "currency": row["currency"].strip(),
                                          "reason": reason, "at_ms": int(time.time() * 1000),
                                          "provider": getattr(provider, "name", None)})
    await scripts.redis.sadd(ledger_dirty_set(prefix), row["event_id"])  # after the XADD: the ledger worker polls it
    if notify_refund is not None:
        await notify_refund(row["event_id"], {"order_id": order_id, "event_id": row["event_id"], "status": "refunded",
                                              "refund_id": refund.refund_id, "amount_minor": row["total_minor"],
                                              "currency": row["currency"].strip(), "reason": reason})
    return {"order_id": order_id, "status": "refunded", "refund_id": refund.refund_id,
            "amount_minor": row["total_minor"], "currency": row["currency"].strip(),
            "returned_to_sale": len(voided.get("seats") or []) + sum((voided.get("ga") or {}).values())}
