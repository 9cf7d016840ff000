"""The demo organisation and its demo event, created once and reused by later `make up` runs."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.organisers import events
from gateway.organisers.event_spec import EventSpec
from gateway.organisers.orgs import create_organisation

DEMO_EVENT: dict[str, Any] = {
    "name": "Flashgate Live: Demo Night",
    "venue": "Demo Arena",
    "currency": "EUR",
    "hold_ttl_s": 300,
    "per_buyer_limit": 6,
    "price_tiers": {"front": 8900, "middle": 6500, "back": 4500},
    "sections": [
        {"name": name, "rows": [{"label": str(r), "seats": 20,
                                 "price_tier": "front" if r <= 3 else "middle" if r <= 7 else "back"}
                                for r in range(1, 11)]}
        for name in ("A", "B", "C")
    ],
    "ga": [{"code": "floor", "name": "Floor (standing)", "capacity": 500, "price_minor": 5500}],
}


async def create_demo(settings: Settings, *, gateway_url: str | None = None) -> dict[str, Any]:
    """Create the demo organisation and an open demo event once; later calls return the same."""
    path = settings.data_dir / "demo.json"
    base = (gateway_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    conn = await asyncpg.connect(settings.database_url)
    try:
        if path.exists():
            saved = json.loads(path.read_text())
            if await conn.fetchval("SELECT 1 FROM events WHERE id = $1 AND organisation_id = $2",
                                   saved.get("event_id"), saved["organisation_id"]):
                saved["links"] = _links(base, saved["event_id"])
                return saved
        org = await create_organisation(conn, name="Demo Organisation")
    finally:
        await conn.close()
    runtime = Runtime.from_settings(settings)
    try:
        pool = await runtime.pg()
        event = await events.create_event(pool, organisation_id=org.id, spec=EventSpec.model_validate(DEMO_EVENT))
        await events.EventAdmin(runtime).change_status(org.id, event["id"], "open")
    finally:
        await runtime.close()
    result = {"organisation_id": org.id, "api_key": org.api_key, "event_id": event["id"],
              "links": _links(base, event["id"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    path.chmod(0o600)
    return result


def _links(base: str, event_id: int) -> list[dict[str, str]]:
    return [{"name": "buyer page", "url": f"{base}/buy/{event_id}"},
            {"name": "availability", "url": f"{base}/v1/events/{event_id}/availability?seats=0"}]
