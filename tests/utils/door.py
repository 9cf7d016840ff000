"""An event at the door: sold tickets (codes, seats, holders) and device tokens, over real HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.servers import run_async


@dataclass
class Door:
    """An open event with paid tickets (codes, seats, holders) and a way to add device tokens."""

    base: str
    key: str
    event_id: int
    tickets: list[dict[str, Any]] = field(default_factory=list)

    def device(self, gate: str) -> dict[str, Any]:
        resp = httpx.post(f"{self.base}/v1/events/{self.event_id}/devices", json={"gate": gate, "name": f"{gate} door"},
                          headers=auth(self.key), timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def scan(self, token: str, code: str, **extra: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.base}/v1/scan", json={"code": code, **extra}, headers=auth(token), timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()


def buy(base: str, event_id: int, body: dict[str, Any], email: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base, timeout=15) as c:
        me = auth(c.post("/v1/buyer-token").json()["buyer_token"])
        hold = c.post(f"/v1/events/{event_id}/holds", json=body, headers=me)
        assert hold.status_code == 201, hold.text
        order = c.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={"email": email},
                       headers={**me, "Idempotency-Key": f"k-{time.monotonic_ns()}"})
        assert order.status_code == 201, order.text
        return [{**t, "holder": email, "order_id": order.json()["order_id"]} for t in order.json()["tickets"]]


def open_door(base: str, database_url: str, *, reentry: dict[str, list[str]] | None = None) -> Door:
    _, key = run_async(new_org, database_url, "Door Tests")
    spec = seat_spec(sections=1, rows=1, seats=6, ga={"floor": 10}, name="Door Night")
    with httpx.Client(base_url=base, timeout=10) as c:
        event = c.post("/v1/events", json=spec, headers=auth(key))
        assert event.status_code == 201, event.text
        eid = event.json()["id"]
        assert c.post(f"/v1/events/{eid}/open", headers=auth(key)).status_code == 200
        if reentry is not None:
            resp = c.put(f"/v1/events/{eid}/scan-rules", json={"reentry": reentry}, headers=auth(key))
            assert resp.status_code == 200, resp.text
    door = Door(base, key, eid)
    door.tickets += buy(base, eid, {"seats": ["A-1-1", "A-1-2"]}, "ada@example.org")
    door.tickets += buy(base, eid, {"seats": ["A-1-3", "A-1-4"]}, "grace@example.org")
    door.tickets += buy(base, eid, {"ga": {"floor": 2}}, "alan@example.org")
    return door
