"""200 concurrent buyers over real HTTP against a real gateway (granian, 2 workers):
overlapping seat and GA holds, releases and confirms; afterwards invariants 1 and 2
hold exactly, and Redis, the gateway's snapshot and the counts agree."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.errors import DomainError
from gateway.sale import inventory
from gateway.store.keys import event_key
from gateway.store.scripts import Scripts
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.inventory import bits

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = 200
ROUNDS = 6
SECTIONS, ROWS, SEATS = 5, 10, 10  # 500 seats
GA_CAP = 300


async def test_concurrent_buyers_never_oversell(live_gateway, database_url, settings):
    _, key = await new_org(database_url)
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=live_gateway, limits=limits, timeout=30) as http:
        spec = seat_spec(sections=SECTIONS, rows=ROWS, seats=SEATS, ga={"floor": GA_CAP}, limit=12)
        event = (await http.post("/v1/events", json=spec, headers=auth(key))).json()
        eid = event["id"]
        assert (await http.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
        labels = [f"{chr(65 + s)}-{r + 1}-{n + 1}" for s in range(SECTIONS) for r in range(ROWS) for n in range(SEATS)]
        hot = labels[:120]  # most requests fight over the same 120 seats

        redis = aioredis.Redis.from_url(settings.redis_url)
        scripts = Scripts(redis)
        confirmed: list[dict] = []
        live_holds: dict[str, tuple[str, dict]] = {}
        outcomes: dict[str, int] = {}

        async def client(i: int) -> None:
            r = random.Random(i)
            tok = (await http.post("/v1/buyer-token")).json()
            buyer_id, headers = tok["buyer_id"], auth(tok["buyer_token"])
            mine: list[dict] = []
            for _ in range(ROUNDS):
                roll = r.random()
                if roll < 0.45:
                    body = {"seats": r.sample(hot if r.random() < 0.8 else labels, r.randint(1, 3))}
                elif roll < 0.7:
                    body = {"ga": {"floor": r.randint(1, 3)}}
                else:
                    body = {"best": {"section": r.choice("ABCDE"), "count": r.randint(1, 4)}}
                resp = await http.post(f"/v1/events/{eid}/holds", json=body, headers=headers)
                code = "created" if resp.status_code == 201 else resp.json()["error"]["code"]
                outcomes[code] = outcomes.get(code, 0) + 1
                assert resp.status_code in (201, 409, 429), resp.text
                if resp.status_code == 201:
                    mine.append(resp.json())
                if mine and r.random() < 0.3:  # give one back
                    h = mine.pop(r.randrange(len(mine)))
                    assert (await http.delete(f"/v1/holds/{h['hold_id']}", headers=headers)).status_code == 200
                if mine and r.random() < 0.35:  # buy one
                    h = mine.pop(r.randrange(len(mine)))
                    try:
                        result = await inventory.confirm(scripts=scripts, prefix=settings.redis_prefix, event_id=eid,
                                                         hold_id=h["hold_id"], buyer=buyer_id,
                                                         order_id=str(uuid.uuid4()), order={})
                        confirmed.append({**h, "result": result})
                    except DomainError as exc:
                        outcomes["confirm_" + exc.code] = outcomes.get("confirm_" + exc.code, 0) + 1
            for h in mine:
                live_holds[h["hold_id"]] = (buyer_id, h)

        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        assert outcomes.get("created", 0) > CLIENTS, outcomes
        assert outcomes.get("seat_unavailable", 0) > 0, "the test must create contention"

        # Invariant 1: no seat sold twice, sold <= capacity.
        sold_labels = [s for c in confirmed for s in c["seats"]]
        assert len(sold_labels) == len(set(sold_labels)), "a seat was sold twice"
        ga_sold = sum(c["ga"].get("floor", 0) for c in confirmed)
        ga_held = sum(h["ga"].get("floor", 0) for _, h in live_holds.values())
        assert ga_sold + ga_held <= GA_CAP
        # Invariant 2: live holds and sold seats are disjoint and account for every held bit.
        held_labels = [s for _, h in live_holds.values() for s in h["seats"]]
        assert len(held_labels) == len(set(held_labels))
        assert not set(held_labels) & set(sold_labels)

        snap = await inventory.read_snapshot(scripts=scripts, prefix=settings.redis_prefix, event_id=eid)
        n = len(labels)
        assert {labels[i] for i in bits(snap["sold"], n)} == set(sold_labels)
        assert {labels[i] for i in bits(snap["held"], n)} == set(held_labels)
        assert snap["ga"]["floor"] == {"cap": GA_CAP, "held": ga_held, "sold": ga_sold}
        assert await redis.zcard(event_key(settings.redis_prefix, eid, "holds")) == len(live_holds)
        ledger = await redis.xlen(event_key(settings.redis_prefix, eid, "ledger"))
        assert ledger == len(confirmed)

        # The gateway's snapshot (every worker answers) agrees with Redis.
        expected_state = "".join("2" if lab in set(sold_labels) else "1" if lab in set(held_labels) else "0"
                                 for lab in labels)
        for _ in range(40):
            bodies = [(await http.get(f"/v1/events/{eid}/availability")).json() for _ in range(6)]
            if all(b["seats"] == expected_state and b["version"] == snap["version"] for b in bodies):
                break
            await asyncio.sleep(0.05)
        assert all(b["seats"] == expected_state for b in bodies)
        counts = bodies[0]["sections"]
        assert sum(s["sold"] for s in counts) == len(sold_labels)
        assert sum(s["held"] for s in counts) == len(held_labels)
        assert sum(s["free"] for s in counts) == n - len(sold_labels) - len(held_labels)
        assert bodies[0]["ga"][0]["available"] == GA_CAP - ga_sold - ga_held
        await redis.aclose()


async def test_expired_holds_are_back_on_sale_within_a_second(live_gateway, database_url, settings, tmp_root):
    from tests.utils.live import start_worker

    _, key = await new_org(database_url)
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        async with httpx.AsyncClient(base_url=live_gateway, timeout=10) as http:
            event = (await http.post("/v1/events", json=seat_spec(ga={"floor": 5}), headers=auth(key))).json()
            eid = event["id"]
            await http.post(f"/v1/events/{eid}/open", headers=auth(key))
            # Shorten this event's hold TTL directly in Redis (the API's minimum is 5 s).
            await redis.hset(event_key(settings.redis_prefix, eid, "meta"), "hold_ttl_ms", 400)
            headers = auth((await http.post("/v1/buyer-token")).json()["buyer_token"])
            with start_worker(settings, "expiry", tmp_root):
                # the worker is running once it has swept a first hold (it may take a while to start)
                canary = await http.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-2"]}, headers=headers)
                assert canary.status_code == 201, canary.text
                for _ in range(600):
                    if (await http.get(f"/v1/events/{eid}/availability")).json()["seats"][1] == "0":
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the expiry worker never swept a hold")
                hold = (await http.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-1"]}, headers=headers)).json()
                ga = (await http.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 5}}, headers=headers)).json()
                expiry = max(hold["expires_at_ms"], ga["expires_at_ms"]) / 1000
                while True:
                    asked_at = time.time()  # the answer shows the inventory at this moment or later
                    body = (await http.get(f"/v1/events/{eid}/availability")).json()
                    if body["seats"][0] == "0" and body["ga"][0]["available"] == 5:
                        break
                    assert asked_at < expiry + 1.0, "expired inventory must be back on sale within 1 s"
                    await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
