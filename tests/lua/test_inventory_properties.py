"""Property test: random sequences of holds, releases, confirms and voids against a plain
model; after every step Redis holds exactly the model's inventory and the invariants hold."""

from __future__ import annotations

import itertools
import uuid

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from gateway.store.keys import event_keys
from gateway.store.scripts import Scripts, parse_reply
from tests.utils.inventory import bits

N_SEATS, GA_CAP, LIMIT = 12, 5, 4
BUYERS = ("ann", "bob", "cid")
_events = itertools.count(2 * 10**12)


@pytest.fixture
def machine(redis_server_url, redis_prefix):
    client = redis.Redis.from_url(redis_server_url)
    scripts = Scripts(client)

    class Inventory(RuleBasedStateMachine):
        holds = Bundle("holds")
        orders = Bundle("orders")

        def __init__(self) -> None:
            super().__init__()
            self.event = next(_events)
            self.keys = event_keys(redis_prefix, self.event)
            self.call("prepare_event", "on_sale", N_SEATS, 3_600_000, LIMIT, 3_600_000, "floor", GA_CAP)
            self.sold: set[int] = set()
            self.held: dict[str, tuple[str, list[int], int]] = {}  # hold -> (buyer, seats, ga)
            self.order_of: dict[str, tuple[str, list[int], int]] = {}
            self.ga_sold = 0
            self.count: dict[str, int] = {b: 0 for b in BUYERS}

        def call(self, name, *args):
            script = scripts[name]
            raw = client.evalsha(script.sha, len(self.keys), *self.keys, *args) if client.script_exists(
                script.sha)[0] else client.eval(script.source, len(self.keys), *self.keys, *args)
            return parse_reply(raw)

        def taken(self) -> set[int]:
            return self.sold | {s for _, seats, _ in self.held.values() for s in seats}

        @rule(target=holds, buyer=st.sampled_from(BUYERS),
              seats=st.lists(st.integers(0, N_SEATS - 1), min_size=1, max_size=3))
        def hold(self, buyer, seats):
            hold_id = uuid.uuid4().hex
            reply = self.call("hold", hold_id, buyer, len(seats), *seats)
            if len(set(seats)) != len(seats):
                assert reply.status == "bad_request"
            elif self.count[buyer] + len(seats) > LIMIT:
                assert reply.status == "limit_exceeded"
            elif set(seats) & self.taken():
                assert reply.status == "seat_unavailable"
                assert set(reply.data["seats"]) == set(seats) & self.taken()
            else:
                assert reply.status == "ok", reply
                self.held[hold_id] = (buyer, list(seats), 0)
                self.count[buyer] += len(seats)
            return hold_id

        @rule(target=holds, buyer=st.sampled_from(BUYERS), qty=st.integers(1, 3))
        def hold_ga(self, buyer, qty):
            hold_id = uuid.uuid4().hex
            reply = self.call("hold_ga", hold_id, buyer, "floor", qty)
            ga_held = sum(g for _, _, g in self.held.values())
            if self.count[buyer] + qty > LIMIT:
                assert reply.status == "limit_exceeded"
            elif GA_CAP - ga_held - self.ga_sold < qty:
                assert reply.status == "sold_out"
            else:
                assert reply.status == "ok", reply
                self.held[hold_id] = (buyer, [], qty)
                self.count[buyer] += qty
            return hold_id

        @rule(hold_id=consumes(holds), other=st.booleans())
        def release(self, hold_id, other):
            live = self.held.get(hold_id)
            buyer = (live[0] if live else "ann") if not other else "mallory"
            reply = self.call("release", hold_id, buyer)
            if live is None:
                assert reply.status == "hold_not_found"
            elif other:
                assert reply.status == "forbidden"
            else:
                assert reply.status == "ok"
                del self.held[hold_id]
                self.count[buyer] -= len(live[1]) + live[2]

        @rule(target=orders, hold_id=consumes(holds))
        def confirm(self, hold_id):
            live = self.held.get(hold_id)
            order_id = uuid.uuid4().hex
            reply = self.call("confirm", hold_id, live[0] if live else "ann", order_id, "{}")
            if live is None:
                assert reply.status == "hold_not_found"
                return None
            assert reply.status == "ok"
            del self.held[hold_id]
            self.sold |= set(live[1])
            self.ga_sold += live[2]
            self.order_of[order_id] = live
            again = self.call("confirm", hold_id, live[0], order_id, "{}")
            assert again.status == "ok" and again.data["replay"] is True
            return order_id

        @rule(order_id=consumes(orders))
        def void(self, order_id):
            if order_id is None:
                return
            buyer, seats, ga = self.order_of.pop(order_id)
            assert self.call("void", order_id, "{}").status == "ok"
            self.sold -= set(seats)
            self.ga_sold -= ga
            self.count[buyer] -= len(seats) + ga
            assert self.call("void", order_id, "{}").data["replay"] is True

        @invariant()
        def redis_matches_the_model(self):
            sold = bits(client.get(self.keys[1]) or b"", N_SEATS)
            held = bits(client.get(self.keys[2]) or b"", N_SEATS)
            assert sold == self.sold
            assert held == {s for _, seats, _ in self.held.values() for s in seats}
            assert not sold & held
            ga = {k.decode(): int(v) for k, v in client.hgetall(self.keys[10]).items()}
            assert ga["held:floor"] == sum(g for _, _, g in self.held.values())
            assert ga["sold:floor"] == self.ga_sold
            assert ga["held:floor"] + ga["sold:floor"] <= GA_CAP
            counts = {k.decode(): int(v) for k, v in client.hgetall(self.keys[6]).items()}
            assert counts == {b: n for b, n in self.count.items() if n}

    Inventory.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                           suppress_health_check=[HealthCheck.function_scoped_fixture])
    client.script_load  # loaded lazily by call()
    yield Inventory
    client.close()


def test_inventory_scripts_match_the_model(machine):
    machine.TestCase().runTest()
