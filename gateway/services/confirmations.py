"""Order confirmations: queued for the notification worker, never awaited by a sale."""

from __future__ import annotations

from typing import Any

from gateway.core.runtime import Runtime
from gateway.services import notify


async def send_confirmation(runtime: Runtime, *, event_id: int, info: Any, result: dict[str, Any], email: str) -> None:
    payload = notify.order_confirmation_email(to=email, order_id=result["order_id"], event_name=info.name,
                                              tickets=result["tickets"])
    await notify.enqueue(runtime, kind="email", payload=payload, org_id=info.organisation_id)
