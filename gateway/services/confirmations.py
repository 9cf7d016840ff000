"""Order confirmations: queued for the notification worker, never awaited by a sale."""

from __future__ import annotations

from typing import Any

from gateway.core.runtime import Runtime
from gateway.services import notify


async def send_confirmation(runtime: Runtime, *, event_id: int, info: Any, result: dict[str, Any],
                            email: str | None) -> None:
    if email:
        payload = notify.order_confirmation_email(to=email, order_id=result["order_id"], event_name=info.name,
                                                  tickets=result["tickets"])
        await notify.enqueue(runtime, kind="email", payload=payload, org_id=info.organisation_id)
    await send_webhook(runtime, info=info, event_type="order.paid", body={
        "order_id": result["order_id"], "event_id": event_id, "status": "paid",
        "total_minor": result["total_minor"], "currency": result["currency"],
        "tickets": [{"ticket_id": t["ticket_id"], "seat": t.get("seat"), "type": t.get("type")}
                    for t in result["tickets"]]})


async def send_webhook(runtime: Runtime, *, info: Any, event_type: str, body: dict[str, Any]) -> None:
    """The organiser's webhook for this event, if one is set (signed and retried by the worker)."""
    if not getattr(info, "webhook_url", ""):
        return
    await notify.enqueue(runtime, kind="webhook", org_id=info.organisation_id, payload={
        "url": info.webhook_url, "secret": info.webhook_secret, "event_type": event_type, "body": body})
