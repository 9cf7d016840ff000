"""Plain factory functions for API tests."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from gateway.organisers.orgs import create_organisation


async def new_org(database_url: str, name: str | None = None) -> tuple[int, str]:
    conn = await asyncpg.connect(database_url)
    try:
        org = await create_organisation(conn, name=name or f"Org {uuid.uuid4().hex[:6]}")
    finally:
        await conn.close()
    return org.id, org.api_key


def seat_spec(*, sections: int = 2, rows: int = 5, seats: int = 10, ga: dict[str, int] | None = None,
              limit: int = 8, ttl: int = 600, name: str = "Test Night", queue: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "currency": "EUR", "hold_ttl_s": ttl, "per_buyer_limit": limit,
        "price_tiers": {"p1": 5000, "p2": 3000},
        "sections": [{"name": chr(ord("A") + s),
                      "rows": [{"label": str(r + 1), "seats": seats, "price_tier": "p1" if r < 2 else "p2"}
                               for r in range(rows)]} for s in range(sections)],
        "ga": [{"code": code, "name": code.title(), "capacity": cap, "price_minor": 2500}
               for code, cap in (ga or {}).items()],
    }
    if queue:
        spec["queue"] = {"enabled": True, "admission_rate": 100}
    if not sections:
        spec.pop("sections")
    return spec


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def open_event(client: httpx.AsyncClient, api_key: str, spec: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/v1/events", json=spec, headers=auth(api_key))
    assert resp.status_code == 201, resp.text
    event = resp.json()
    resp = await client.post(f"/v1/events/{event['id']}/open", headers=auth(api_key))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def buyer(client: httpx.AsyncClient) -> dict[str, str]:
    resp = await client.post("/v1/buyer-token")
    assert resp.status_code == 201, resp.text
    return auth(resp.json()["buyer_token"])
