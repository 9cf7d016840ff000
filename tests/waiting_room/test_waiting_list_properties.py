"""Property test of the waiting list's Lua scripts: random sequences of joins, refunds (voids), accepts,
leaves, lapses, leader steps, releases and purchases of accepted holds, and outsiders trying to hold, on an
event sold out for good (seats and GA tickets). After every step: nothing oversold, nobody offered ahead of a
buyer listed before them, no returned ticket free while a buyer waits (except between a release and the
leader's next step), every open offer a live hold of its buyer, an accept succeeds only for the buyer the
offer is bound to; at the end the audit's replay of the whole history is clean.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import hypothesis.strategies as st
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.organisers.history import bits, replay_event
from gateway.store.keys import event_key, qkey, waitlist_keys
from gateway.store.scripts import Scripts, parse_reply

N_SEATS, GA_CAP, LIMIT, TTL_MS = 4, 4, 2, 600_000
OWNERS = ("o1", "o2", "o3", "o4")
LISTED = tuple(f"l{i}" for i in range(6)) + ("o1",)  # o1 owns the most a buyer may: skipped as full
_events = itertools.count(3 * 10**12)


@pytest.fixture
def machine(redis_server_url, redis_prefix):
    client = redis.Redis.from_url(redis_server_url)
    scripts = Scripts(client)

    class WaitingList(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.event = next(_events)
            self.keys = waitlist_keys(redis_prefix, self.event)
            self.call("prepare_event", "on_sale", N_SEATS, 3_600_000, LIMIT, 3_600_000, "floor", GA_CAP)
            self.orders: list[str] = []
            for buyer, how in zip(OWNERS, (("hold", 2, 0, 1), ("hold", 2, 2, 3), ("hold_ga", "floor", 2),
                                           ("hold_ga", "floor", 2))):
                hold_id = uuid.uuid4().hex
                assert self.call(how[0], hold_id, buyer, *how[1:]).ok
                order_id = str(uuid.uuid4())
                assert self.call("confirm", hold_id, buyer, order_id, "{}").ok
                self.orders.append(order_id)
            # the admission leader's view: queue mode, sold out for good (queue_advance.lua writes it)
            client.hset(event_key(redis_prefix, self.event, "meta"), "queue_mode", 1)
            client.hset(qkey(redis_prefix, self.event, "state"), "sold_out", 1)
            self.accepted: dict[str, str] = {}  # buyer -> their accepted hold (until bought or released)
            self.loose = False                  # a hold was given back since the leader's last step

        def key(self, name: str) -> str:
            return event_key(redis_prefix, self.event, name)

        def call(self, name, *args):
            script = scripts[name]
            return parse_reply(client.eval(script.source, len(self.keys), *self.keys, *args))

        def entries(self) -> dict[str, dict]:
            return {b.decode(): orjson.loads(v) for b, v in client.hgetall(self.key("wl:who")).items()}

        def free(self) -> int:
            sold, held = bits(client.get(self.key("sold"))), bits(client.get(self.key("held")))
            ga = {k.decode(): int(v) for k, v in client.hgetall(self.key("ga")).items()}
            return (N_SEATS - len(sold | held)) + ga["cap:floor"] - ga.get("held:floor", 0) - ga.get("sold:floor", 0)

        def act(self, name, *args, loose: bool = False):
            """Run one script and check that the offers it made went in list order."""
            before = self.entries()
            reply = self.call(name, *args)
            after = self.entries()
            newly = [e["n"] for b, e in after.items() if e["st"] == "offered" and
                     (before.get(b, {}).get("st") != "offered" or before[b].get("o") != e.get("o"))]
            waiting = [e["n"] for e in after.values() if e["st"] == "waiting"]
            if newly and waiting:
                assert max(newly) < min(waiting), (name, newly, waiting)
            for b, e in after.items():
                if e["st"] == "full" and before.get(b, {}).get("st") != "full":
                    assert int(client.hget(self.key("buyers"), b) or 0) >= LIMIT, (b, e)
            self.loose = loose or (self.loose and name not in ("waitlist_step",))
            return before, reply

        @rule(buyer=st.sampled_from(LISTED))
        def join(self, buyer):
            _, reply = self.act("waitlist_join", buyer, "", TTL_MS)
            assert reply.ok, reply

        @rule(index=st.integers(0, len(OWNERS) - 1))
        def refund(self, index):
            _, reply = self.act("void", self.orders[index], "{}", TTL_MS)
            assert reply.ok, reply

        @rule(buyer=st.sampled_from(LISTED), count=st.integers(0, 3))
        def accept(self, buyer, count):
            hold_id = f"{self.event}-{uuid.uuid4().hex}"
            before, reply = self.act("waitlist_accept", buyer, count, hold_id, TTL_MS)
            was = before.get(buyer, {})
            if was.get("st") != "offered":
                assert reply.status == "no_offer", reply
            elif was["dl"] == 1:  # past its deadline, not yet passed on by the leader
                assert reply.status == "offer_lapsed", reply
                assert self.entries()[buyer]["st"] == "lapsed"
            elif count > was["q"]:
                assert reply.status == "bad_request", reply
            else:
                assert reply.ok and reply.data["count"] == (count or was["q"]), reply
                self.accepted[buyer] = hold_id

        @rule(buyer=st.sampled_from(LISTED))
        def leave(self, buyer):
            self.act("waitlist_leave", buyer, TTL_MS)

        @rule()
        def deadlines_pass(self):
            """Time passes beyond every open offer's deadline (the hold itself has its 60 s of grace left);
            the leader's next step, or the buyer's late accept, passes each offer on."""
            for buyer, e in self.entries().items():
                if e["st"] == "offered":
                    e["dl"] = 1
                    client.hset(self.key("wl:who"), buyer, orjson.dumps(e))
                    client.zadd(self.key("wl:offers"), {buyer: 1})

        @rule()
        def step(self):
            self.act("waitlist_step", TTL_MS)

        @rule(buyer=st.sampled_from(LISTED))
        def release(self, buyer):
            hold_id = self.accepted.pop(buyer, None)
            if hold_id is not None:
                self.act("release", hold_id, buyer, loose=True)

        @rule(buyer=st.sampled_from(LISTED))
        def buy(self, buyer):
            hold_id = self.accepted.pop(buyer, None)
            if hold_id is not None:
                order_id = str(uuid.uuid4())
                assert self.call("confirm", hold_id, buyer, order_id, "{}").ok
                self.orders.append(order_id)

        @rule(seat=st.integers(0, N_SEATS - 1))
        def outsider(self, seat):
            """A buyer who is not listed (say, admitted before the sell-out) tries to hold."""
            listed = client.zcard(self.key("wl:list"))
            for args in (("hold", uuid.uuid4().hex, "x", 1, seat), ("hold_ga", uuid.uuid4().hex, "x", "floor", 1)):
                reply = self.call(*args)
                if reply.ok:
                    assert self.loose or not listed, "an outsider took a returned ticket while buyers wait"
                    self.call("release", args[1], "x")

        @invariant()
        def never_oversold(self):
            sold, held = bits(client.get(self.key("sold"))), bits(client.get(self.key("held")))
            assert not sold & held and all(i < N_SEATS for i in sold | held)
            ga = {k.decode(): int(v) for k, v in client.hgetall(self.key("ga")).items()}
            assert ga.get("held:floor", 0) + ga.get("sold:floor", 0) <= GA_CAP
            assert ga.get("held:floor", 0) >= 0 and ga.get("sold:floor", 0) >= 0

        @invariant()
        def nothing_free_while_buyers_wait(self):
            if not self.loose and client.zcard(self.key("wl:list")):
                assert self.free() == 0

        @invariant()
        def open_offers_are_holds_of_their_buyer(self):
            offers = {b.decode() for b in client.zrange(self.key("wl:offers"), 0, -1)}
            for buyer, e in self.entries().items():
                assert (e["st"] == "offered") == (buyer in offers)
                if e["st"] == "offered":
                    rec = orjson.loads(client.hget(self.key("hdata"), e["h"]))
                    assert rec["b"] == buyer and rec["n"] == e["q"] <= LIMIT

        def teardown(self):
            async def audit():
                r = aioredis.Redis.from_url(redis_server_url)
                try:
                    return await replay_event(redis=r, prefix=redis_prefix, event_id=self.event)
                finally:
                    await r.aclose()

            history = asyncio.run(audit())
            assert history.ok, [str(v) for v in history.violations][:5] or history.replay.incomplete

    yield WaitingList
    client.close()


def test_waiting_list_scripts_keep_their_promises(machine):
    checks = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    settings(max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=checks)(machine) \
        .TestCase().runTest()
