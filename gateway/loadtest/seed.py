"""Seeding a load test through the public API: a fresh event, the keys and tickets a scenario
needs, written as the seed file the k6 scripts read (`loadtest/README.md` has its format).

Everything goes through HTTP, so the same seeding works against the local platform the runner
starts and against an explicit `--target` URL with an organiser key.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx

SECTION = "A"
ROW_SEATS = 50
GA_TYPE = "floor"
DOOR_TYPE = "door"
PER_ORDER = 10  # tickets bought per order when seeding the door (a hold's maximum is larger)


class SeedError(RuntimeError):
    """The target refused a seeding step; the message says which and why."""


@dataclass
class SaleShape:
    """The event a sale scenario runs against."""

    capacity: int = 1000          # tickets on sale in all: seats + GA
    seated_pct: float = 50.0      # share of the capacity that is seated (section A, rows of 50)
    queue: bool = True            # the waiting room on (flash_sale) or off (open_sale)
    admission_rate: float = 300.0
    per_buyer_limit: int = 8
    hold_ttl_s: int = 20
    price_minor: int = 5000

    def seats(self) -> int:
        return int(round(self.capacity * self.seated_pct / 100))

    def spec(self, name: str) -> dict[str, Any]:
        seats = self.seats()
        rows = []
        for r in range((seats + ROW_SEATS - 1) // ROW_SEATS):
            rows.append({"label": str(r + 1), "seats": min(ROW_SEATS, seats - r * ROW_SEATS), "price_tier": "std"})
        spec: dict[str, Any] = {"name": name, "currency": "EUR", "per_buyer_limit": self.per_buyer_limit,
                                "hold_ttl_s": self.hold_ttl_s}
        if rows:
            spec["price_tiers"] = {"std": self.price_minor}
            spec["sections"] = [{"name": SECTION, "rows": rows}]
        if self.capacity - seats > 0:
            spec["ga"] = [{"code": GA_TYPE, "name": "Floor", "capacity": self.capacity - seats,
                           "price_minor": self.price_minor}]
        if self.queue:
            spec["queue"] = {"enabled": True, "admission_rate": self.admission_rate}
        return spec

    def labels(self) -> list[str]:
        seats = self.seats()
        return [f"{SECTION}-{i // ROW_SEATS + 1}-{i % ROW_SEATS + 1}" for i in range(seats)]


def _check(res: httpx.Response, what: str) -> dict[str, Any]:
    if res.status_code >= 400:
        try:
            err = res.json().get("error", {})
            why = f"{err.get('code')}: {err.get('message')}"
        except ValueError:
            why = res.text[:200]
        raise SeedError(f"{what}: {res.status_code} {why}")
    return res.json() if res.content else {}


class Seeder:
    """Seeds through one organisation key (role `admin`: it creates events, keys and devices)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60)

    def create_event(self, spec: dict[str, Any], open_now: bool = True) -> int:
        with self.client() as c:
            event = _check(c.post("/v1/events", json=spec), "creating the event")
            if open_now:
                _check(c.post(f"/v1/events/{event['id']}/open"), "opening the event")
        return int(event["id"])

    def sales_key(self, name: str) -> str:
        """A key with the `sales` role (figures only), the one dashboards watch with."""
        with self.client() as c:
            return _check(c.post("/v1/keys", json={"name": name, "role": "sales"}), "creating a sales key")["key"]

    def devices(self, event_id: int, n: int, gates: int = 8) -> list[str]:
        with self.client() as c:
            return [_check(c.post(f"/v1/events/{event_id}/devices", json={"gate": f"gate-{i % gates + 1}"}),
                           "creating a door device")["token"] for i in range(n)]

    def buy(self, event_id: int, n: int, ticket_type: str, lanes: int = 16) -> list[str]:
        """Buy `n` tickets of a GA type through the buyer path (token, hold, checkout); their codes."""
        return asyncio.run(self._buy(event_id, n, ticket_type, lanes))

    async def _buy(self, event_id: int, n: int, ticket_type: str, lanes: int) -> list[str]:
        codes: list[str] = []
        orders = [min(PER_ORDER, n - i) for i in range(0, n, PER_ORDER)]

        async def lane(sizes: list[int]) -> None:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as c:
                for size in sizes:
                    token = _check(await c.post("/v1/buyer-token"), "getting a buyer token")["buyer_token"]
                    h = {"Authorization": f"Bearer {token}"}
                    hold = _check(await c.post(f"/v1/events/{event_id}/holds", json={"ga": {ticket_type: size}},
                                               headers=h), "holding door tickets")
                    for attempt in range(20):
                        res = await c.post(f"/v1/holds/{hold['hold_id']}/checkout", json={"email": "door@example.org"},
                                           headers={**h, "Idempotency-Key": f"seed-{hold['hold_id']}"})
                        if res.status_code != 503:
                            break
                        await asyncio.sleep(float(res.headers.get("Retry-After", "1")))
                    order = _check(res, "paying for door tickets")
                    codes.extend(t["code"] for t in order["tickets"])

        await asyncio.gather(*(lane(orders[i::lanes]) for i in range(lanes)))
        return codes


def seed_sale(seeder: Seeder, shape: SaleShape, *, watchers: bool) -> dict[str, Any]:
    """A fresh sale event (seated section + GA type) for flash_sale / open_sale."""
    name = f"load test {time.strftime('%Y-%m-%d %H:%M:%S')} {secrets.token_hex(2)}"
    event_id = seeder.create_event(shape.spec(name))
    seed: dict[str, Any] = {
        "event_id": event_id, "queue": shape.queue, "ga_type": GA_TYPE if shape.capacity > shape.seats() else None,
        "ga_capacity": shape.capacity - shape.seats(), "section": SECTION if shape.seats() else None,
        "seats": shape.labels(), "per_buyer_limit": shape.per_buyer_limit, "hold_ttl_s": shape.hold_ttl_s,
        "capacity": shape.capacity,
    }
    if watchers:
        seed["api_key"] = seeder.sales_key(f"dashboard watchers of event {event_id}")
    return seed


def seed_door(seeder: Seeder, tickets: int, devices: int, other: int = 100) -> dict[str, Any]:
    """An event whose `tickets` tickets were bought through checkout, door devices, and a few tickets
    of another event (for the wrong-event scans a door sees)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    spec = {"name": f"door rush {stamp}", "currency": "EUR", "hold_ttl_s": 3600, "per_buyer_limit": PER_ORDER,
            "ga": [{"code": DOOR_TYPE, "name": "Door", "capacity": tickets, "price_minor": 100}]}
    event_id = seeder.create_event(spec)
    other_spec = {**spec, "name": f"door rush {stamp} (another event)",
                  "ga": [{"code": DOOR_TYPE, "name": "Door", "capacity": other, "price_minor": 100}]}
    other_id = seeder.create_event(other_spec)
    return {"door_event_id": event_id, "tickets": seeder.buy(event_id, tickets, DOOR_TYPE),
            "other_event_id": other_id, "other_event_tickets": seeder.buy(other_id, other, DOOR_TYPE),
            "device_tokens": seeder.devices(event_id, devices)}
