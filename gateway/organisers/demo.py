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
from gateway.core.tokens import TokenSigner
from gateway.scanning.devices import register

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
                if not saved.get("device_token"):  # a demo made before door scanning existed
                    saved["device_token"] = await _device_token(conn, settings, saved["event_id"])
                    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "links"}))
                saved["links"] = _links(base, saved["event_id"], saved["device_token"])
                return saved
        org = await create_organisation(conn, name="Demo Organisation")
    finally:
        await conn.close()
    runtime = Runtime.from_settings(settings)
    try:
        pool = await runtime.pg()
        event = await events.create_event(pool, organisation_id=org.id, spec=EventSpec.model_validate(DEMO_EVENT))
        await events.EventAdmin(runtime).change_status(org.id, event["id"], "open")
        token = await _device_token(pool, settings, event["id"])
    finally:
        await runtime.close()
    result = {"organisation_id": org.id, "api_key": org.api_key, "event_id": event["id"], "device_token": token,
              "links": _links(base, event["id"], token)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    path.chmod(0o600)
    return result


async def _device_token(conn: Any, settings: Settings, event_id: int) -> str:
    """A scanning device for the demo event's main gate (docs/scanning.md); its token is kept in demo.json."""
    device = await register(conn, signer=TokenSigner(settings.secret_bytes), event_id=event_id, gate="main",
                            name="demo scanner")
    return device["token"]


def _links(base: str, event_id: int, device_token: str | None = None) -> list[dict[str, str]]:
    return [{"name": "buyer page", "url": f"{base}/buy/{event_id}"},
            {"name": "availability", "url": f"{base}/v1/events/{event_id}/availability?seats=0"},
            {"name": "dashboard", "url": f"{base}/dashboard/{event_id}"},
            *([{"name": "scanner page", "url": f"{base}/scan#token={device_token}"}] if device_token else [])]
