"""Tickets held at once per client address (the hold scripts' `@<address>`, factor arguments): random
holds, releases, expiries and sales from a few addresses against a plain model, on a single Redis and a
real Cluster. After every step the `addrs` counts equal the model's, and a hold is refused with
`address_limit_exceeded` exactly when it would take its address past the cap."""

from __future__ import annotations

import random
import time

import pytest

from gateway.core.errors import DomainError
from gateway.sale import inventory as inv
from tests.utils.inventory import key, new_id, open_event, state

pytestmark = pytest.mark.anyio

N_SEATS, GA_CAP, LIMIT, FACTOR = 40, 40, 3, 2.0
CAP = int(FACTOR * LIMIT)
ADDRESSES = ("203.0.113.1", "203.0.113.2", "2001:db8::/64")


async def test_address_counts_follow_every_hold_release_expiry_and_sale(scripts, redis_prefix, event_id):
    rng = random.Random(event_id)
    c = {"scripts": scripts, "prefix": redis_prefix, "event_id": event_id}
    await open_event(scripts, redis_prefix, event_id, n_seats=N_SEATS, limit=LIMIT, ga={"floor": GA_CAP})
    live: dict[str, tuple[str, str, int]] = {}  # hold -> (buyer, address, tickets)
    model = {a: 0 for a in ADDRESSES}
    free_seats = list(range(N_SEATS))
    refusals = 0
    for step in range(150):
        op = rng.choice(("hold", "hold", "hold", "release", "expire", "sell"))
        if op == "hold":
            address, buyer, n = rng.choice(ADDRESSES), f"b{step}", rng.randint(1, LIMIT)
            hold_id = new_id()
            where = ["@" + address, FACTOR]
            try:
                if rng.random() < 0.5 and len(free_seats) >= n:
                    seats = rng.sample(free_seats, n)
                    data = await inv.hold_seats(**c, hold_id=hold_id, buyer=buyer, seats=seats, address=where)
                    for s in data["seats"]:
                        free_seats.remove(s)
                else:
                    await inv.hold_ga(**c, hold_id=hold_id, buyer=buyer, ticket_type="floor", quantity=n,
                                      address=where)
            except DomainError as err:
                if err.code == "sold_out":
                    continue
                assert err.code == "address_limit_exceeded", err.code
                assert model[address] + n > CAP and err.details["held"] == model[address]
                assert err.details["limit"] == CAP and err.headers["Retry-After"]
                refusals += 1
            else:
                assert model[address] + n <= CAP
                model[address] += n
                live[hold_id] = (buyer, address, n)
        elif live:
            hold_id = rng.choice(sorted(live))
            buyer, address, n = live.pop(hold_id)
            if op == "release":
                await inv.release(**c, hold_id=hold_id, buyer=buyer)
            elif op == "sell":
                await inv.confirm(**c, hold_id=hold_id, buyer=buyer, order_id=new_id(), order={})
            else:  # expired: its expiry moved into the past, then swept by the expiry script
                await scripts.redis.zadd(key(redis_prefix, event_id, "holds"), {hold_id: int(time.time() * 1000) - 1})
                assert (await inv.expire(**c))["expired"] >= 1
            model[address] -= n
            if op != "sell":
                free_seats = sorted(set(range(N_SEATS)) - await _taken(scripts, redis_prefix, event_id))
        counts = await scripts.redis.hgetall(key(redis_prefix, event_id, "addrs"))
        assert {k.decode(): int(v) for k, v in counts.items()} == {a: n for a, n in model.items() if n}, step
    assert refusals, "the sequence never reached the cap: it proves nothing"


async def _taken(scripts, prefix: str, event_id: int) -> set[int]:
    s = await state(scripts, prefix, event_id, N_SEATS)
    return s["sold"] | s["held"]


async def test_a_hold_without_an_address_is_not_counted(scripts, redis_prefix, event_id):
    c = {"scripts": scripts, "prefix": redis_prefix, "event_id": event_id}
    await open_event(scripts, redis_prefix, event_id, n_seats=10, limit=LIMIT, ga={"floor": 10})
    await inv.hold_seats(**c, hold_id=new_id(), buyer="ann", seats=[1, 2])
    await inv.hold_ga(**c, hold_id=new_id(), buyer="bob", ticket_type="floor", quantity=3)
    assert not await scripts.redis.hgetall(key(redis_prefix, event_id, "addrs"))
