"""An open event with tickets bought through the real checkout, and scanning devices for it."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from gateway.workers.ledger import LedgerWorker
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

_keys = itertools.count(1)


async def buy(client: httpx.AsyncClient, event_id: int, body: dict[str, Any],
              email: str = "fan@example.org") -> dict[str, Any]:
    """An order through hold + checkout (the payment simulator); returns the checkout answer."""
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{event_id}/holds", json=body, headers=me)
    assert hold.status_code == 201, hold.text
    order = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={"email": email},
                              headers={**me, "Idempotency-Key": f"scan-test-{next(_keys):08d}"})
    assert order.status_code == 201, order.text
    return order.json()


async def device(client: httpx.AsyncClient, event: dict[str, Any], gate: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/events/{event['id']}/devices", json={"gate": gate, "name": f"{gate} phone"},
                             headers=auth(event["api_key"]))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def scan(client: httpx.AsyncClient, dev: dict[str, Any], code: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/v1/scan", json={"code": code, **extra}, headers=auth(dev["token"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def drain_ledger(app: Any) -> None:
    worker = LedgerWorker(app.gateway.runtime, consumer="scan-test")
    while await worker.step():
        pass


@pytest.fixture
async def door(client, database_url, sim) -> dict[str, Any]:
    """An open event (20 seats, 30 floor GA), two orders bought, devices at gates north and south."""
    _, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(sections=1, rows=2, seats=10, ga={"floor": 30}, limit=10,
                                                 name="Door Night"))
    ev["api_key"] = key
    ev["orders"] = [await buy(client, ev["id"], {"seats": ["A-1-1", "A-1-2"]}, "ada@example.org"),
                    await buy(client, ev["id"], {"ga": {"floor": 3}}, "grace@example.org")]
    ev["tickets"] = [t for o in ev["orders"] for t in o["tickets"]]
    ev["north"] = await device(client, ev, "north")
    ev["south"] = await device(client, ev, "south")
    return ev
