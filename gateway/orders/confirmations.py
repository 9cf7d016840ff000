"""Order confirmations and organiser webhooks: queued for the notification worker,
never awaited by a sale (a notification that cannot be queued never fails one)."""

from __future__ import annotations

from typing import Any

from gateway.core.runtime import Runtime
from gateway.orders import notify
from gateway.orders.tickets import EventInfo


class Confirmations:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def order_paid(self, *, event_id: int, info: EventInfo, result: dict[str, Any],
                         email: str | None) -> None:
        if email:
            payload = notify.order_confirmation_email(to=email, order_id=result["order_id"], event_name=info.name,
                                                      tickets=result["tickets"])
            await notify.enqueue(self.runtime, kind="email", payload=payload, org_id=info.organisation_id)
        await self.webhook(info=info, event_type="order.paid", body={
            "order_id": result["order_id"], "event_id": event_id, "status": "paid",
            "total_minor": result["total_minor"], "currency": result["currency"],
            "tickets": [{"ticket_id": t["ticket_id"], "seat": t.get("seat"), "type": t.get("type")}
                        for t in result["tickets"]]})

    async def webhook(self, *, info: EventInfo, event_type: str, body: dict[str, Any]) -> None:
        """The organiser's webhook for this event, if one is set (signed and retried by the worker)."""
        if not info.webhook_url:
            return
        await notify.enqueue(self.runtime, kind="webhook", org_id=info.organisation_id, payload={
            "url": info.webhook_url, "secret": info.webhook_secret, "event_type": event_type, "body": body})
