"""The demo organisation (and, once events exist, a demo event)."""

from __future__ import annotations

import json

import asyncpg

from gateway.core.config import Settings
from gateway.services.orgs import create_organisation


async def create_demo(settings: Settings, *, gateway_url: str | None = None) -> dict:
    """Create the demo organisation once; later calls return the same ids and key."""
    path = settings.data_dir / "demo.json"
    conn = await asyncpg.connect(settings.database_url)
    try:
        if path.exists():
            saved = json.loads(path.read_text())
            if await conn.fetchval("SELECT 1 FROM organisations WHERE id = $1", saved["organisation_id"]):
                return saved
        org = await create_organisation(conn, name="Demo Organisation")
    finally:
        await conn.close()
    result = {"organisation_id": org.id, "api_key": org.api_key, "links": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result
