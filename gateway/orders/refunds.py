"""Refunds (organiser): money back through the provider, tickets void, seats on sale again."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from gateway.core.errors import DomainError
from gateway.providers.payments import PaymentRejected, ProviderUnavailable
from gateway.sale import inventory
from gateway.sale.checkout import FREE_PROVIDER
from gateway.store.keys import ledger_dirty_set


def order_not_found(order_id: str) -> DomainError:
    return DomainError("order_not_found", "No such order.", details={"order_id": order_id})


async def refund_order(*, pool: asyncpg.Pool, scripts: Any, provider: Any, prefix: str, organisation_id: int,
                       order_id: str, reason: str | None = None, notify_refund: Any = None,
                       offer_ttl_ms: int = 600_000) -> dict[str, Any]:
    try:
        order_uuid = uuid.UUID(order_id)
    except ValueError:
        raise order_not_found(order_id) from None
    row = await pool.fetchrow(
        """SELECT o.id, o.event_id, o.status, o.total_minor, o.currency, e.organisation_id,
                  p.provider_ref AS ref, p.provider
           FROM orders o JOIN events e ON e.id = o.event_id
           LEFT JOIN LATERAL (SELECT provider_ref, provider FROM payments p WHERE p.order_id = o.id
                              AND p.kind = 'capture' LIMIT 1) p ON true
           WHERE o.id = $1""", order_uuid)
    if row is None or row["organisation_id"] != organisation_id:
        raise order_not_found(order_id)
    if row["ref"] is None:
        raise DomainError("invalid_state", "This order has no captured payment to refund.",
                          details={"order_id": order_id})
    refused = await pool.fetchrow("SELECT refund_ref, refunded_at FROM sale_conflicts WHERE order_id = $1", order_uuid)
    if refused is not None:  # a sale Postgres refused (gateway/orders/conflicts.py): its seats are another order's
        if refused["refunded_at"] is None:
            raise DomainError("invalid_state", "This sale was refused (its seats belong to another order) and is "
                              "being refunded automatically; try again in a minute.", details={"order_id": order_id},
                              headers={"Retry-After": "60"})
        return {"order_id": order_id, "status": "refunded", "refund_id": refused["refund_ref"],
                "amount_minor": row["total_minor"], "currency": row["currency"].strip(), "returned_to_sale": 0}
    if row["provider"] == FREE_PROVIDER:  # a free order: no money to give back, no provider to call
        refund_id, provider_name = f"{row['ref']}-refund", FREE_PROVIDER
    else:
        try:
            refund_id = (await provider.refund(idempotency_key=f"{order_id}:refund", payment_id=row["ref"],
                                               amount_minor=row["total_minor"])).refund_id
        except ProviderUnavailable as exc:
            raise exc.to_domain() from None
        except PaymentRejected as exc:
            raise exc.to_domain() from None
        provider_name = getattr(provider, "name", None)
    voided = await inventory.void(scripts=scripts, prefix=prefix, event_id=row["event_id"], order_id=order_id,
                                  refund={"refund_id": refund_id, "payment_id": row["ref"],
                                          "amount_minor": row["total_minor"], "currency": row["currency"].strip(),
                                          "reason": reason, "at_ms": int(time.time() * 1000),
                                          "provider": provider_name}, offer_ttl_ms=offer_ttl_ms)
    await scripts.redis.sadd(ledger_dirty_set(prefix), row["event_id"])  # after the XADD: the ledger worker polls it
    if notify_refund is not None:
        await notify_refund(row["event_id"], {"order_id": order_id, "event_id": row["event_id"], "status": "refunded",
                                              "refund_id": refund_id, "amount_minor": row["total_minor"],
                                              "currency": row["currency"].strip(), "reason": reason})
    return {"order_id": order_id, "status": "refunded", "refund_id": refund_id,
            "amount_minor": row["total_minor"], "currency": row["currency"].strip(),
            "returned_to_sale": len(voided.get("seats") or []) + sum((voided.get("ga") or {}).values()),
            "waitlist_offers": voided.get("offered", 0)}
