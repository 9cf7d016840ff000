"""Joining and polling the waiting room over the API (in-process app, real Redis)."""

from __future__ import annotations

import hashlib

import pytest

from gateway.waiting_room.shuffle import shuffle_place
from tests.utils.factories import auth
from tests.waiting_room.conftest import join, leader, new_buyer, poll, queue_event, wait_for

pytestmark = pytest.mark.anyio


async def test_join_twice_returns_the_same_place(qclient, database_url):
    event = await queue_event(qclient, database_url, rate=5)
    me = await new_buyer(qclient)
    first = await join(qclient, event["id"], me, expect=201)
    assert first["status"] == "waiting" and first["position"] >= 1 and first["queue_token"].startswith("q.")
    assert first["rejoined"] is False and first["eta_s"] is not None
    again = await join(qclient, event["id"], me, expect=200)  # a refresh, a new tab
    assert again["place"] == first["place"] and again["rejoined"] is True
    assert (await poll(qclient, event["id"], again["queue_token"]))["place"] == first["place"]


async def test_fifo_after_opening(qclient, database_url, settings):
    event = await queue_event(qclient, database_url, rate=4)
    buyers = [await new_buyer(qclient) for _ in range(12)]
    tokens = []
    for i, b in enumerate(buyers):
        body = await join(qclient, event["id"], b, expect=201)
        assert body["position"] == i + 1  # nobody admitted yet: position = join order
        tokens.append(body["queue_token"])
    async with leader(settings):
        async def some_admitted():
            states = [(await poll(qclient, event["id"], t))["status"] for t in tokens]
            return states if "admitted" in states and "waiting" in states else None

        states = await wait_for(some_admitted)
        assert states, "admission did not start"
        # admission order equals join order: the admitted form a prefix
        k = states.count("admitted")
        assert states == ["admitted"] * k + ["waiting"] * (len(states) - k)
        done = await wait_for(lambda: _all_admitted(qclient, event["id"], tokens))
        assert done


async def _all_admitted(client, event_id, tokens):
    return all([(await poll(client, event_id, t))["status"] == "admitted" for t in tokens])


async def prequeue_order(client, database_url, n: int) -> tuple[dict, list[int], list[dict]]:
    event = await queue_event(client, database_url, open_=False, prequeue=True)
    buyers = [await new_buyer(client) for _ in range(n)]
    joined = []
    for b in buyers:
        body = await join(client, event["id"], b, expect=201)
        assert body["status"] == "prequeue" and body["position"] is None
        assert body["prequeue"]["commitment"] == event["commitment"]
        joined.append(body)
    stats = (await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
    assert stats["queue"]["prequeue"]["size"] == n and "seed" not in stats["queue"]["prequeue"]
    resp = await client.post(f"/v1/events/{event['id']}/open", headers=auth(event["api_key"]))
    assert resp.status_code == 200
    places = [(await poll(client, event["id"], j["queue_token"]))["place"] for j in joined]
    return event, places, buyers


async def test_prequeue_is_one_verifiable_shuffle(qclient, database_url):
    n = 40
    event, places, buyers = await prequeue_order(qclient, database_url, n)
    assert sorted(places) == list(range(1, n + 1))  # a permutation
    stats = (await qclient.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
    pre = stats["queue"]["prequeue"]
    seed = pre["seed"]
    assert pre["size"] == n and hashlib.sha256(seed.encode()).hexdigest() == event["commitment"]
    assert places == [shuffle_place(seed, n, i + 1) for i in range(n)]  # reproducible from the seed
    # the Lua twin agrees: a rejoin after opening computes the place in Redis
    again = await join(qclient, event["id"], buyers[7], expect=200)
    assert again["place"] == places[7]
    # after opening: FIFO behind the pre-queue
    late = await join(qclient, event["id"], await new_buyer(qclient), expect=201)
    assert late["place"] == n + 1
    _, other, _ = await prequeue_order(qclient, database_url, n)
    assert other != places  # a new seed, a new order (1 chance in 40! to fail)


async def test_positions_never_go_up_and_eta_uses_measured_rate(qclient, database_url, settings):
    event = await queue_event(qclient, database_url, rate=10)
    bodies = [await join(qclient, event["id"], await new_buyer(qclient)) for _ in range(30)]
    last = bodies[-1]["queue_token"]
    seen = []
    async with leader(settings):
        for _ in range(60):  # 3 s: positions count from the previous second's admitted-up-to (1-2 s behind)
            body = await poll(qclient, event["id"], last)
            seen.append(body["position"])
            await qclient.get(f"/v1/events/{event['id']}/queue", headers=auth(bodies[0]["queue_token"]))
            await __import__("asyncio").sleep(0.05)
        stats = (await qclient.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
    assert all(a >= b for a, b in zip(seen, seen[1:])) and seen[-1] < seen[0]
    q = stats["queue"]
    assert q["rate"]["configured_per_s"] == 10 and q["rate"]["places_per_s"] > 0
    assert q["joined"] == 30 and q["admitted"] >= 1 and q["length"] == 30 - q["admitted_up_to"]


async def test_no_queue_and_not_open(qclient, database_url):
    from tests.utils.factories import new_org, open_event, seat_spec

    _, key = await new_org(database_url)
    plain = await open_event(qclient, key, seat_spec())
    resp = await qclient.post(f"/v1/events/{plain['id']}/queue", headers=auth((await new_buyer(qclient))["buyer_token"]))
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "invalid_state"
    draft = await queue_event(qclient, database_url, open_=False)
    resp = await qclient.post(f"/v1/events/{draft['id']}/queue", headers=auth((await new_buyer(qclient))["buyer_token"]))
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_on_sale"
    resp = await qclient.post("/v1/events/abc/queue")
    assert resp.status_code == 404
    # an id that does not exist reads as a draft to the waiting room (docs/known-limitations.md); a hold says 404
    buyer = auth((await new_buyer(qclient))["buyer_token"])
    resp = await qclient.post("/v1/events/987654321/queue", headers=buyer)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_on_sale", resp.text
    assert resp.json()["error"]["details"].get("status") == "draft", resp.text
    resp = await qclient.post("/v1/events/987654321/holds", json={"ga": {"floor": 1}}, headers=buyer)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "event_not_found", resp.text


async def test_admission_patch_validation_and_stats(qclient, database_url):
    event = await queue_event(qclient, database_url, rate=10)
    url = f"/v1/events/{event['id']}/admission"
    h = auth(event["api_key"])
    for body in ({"rate_per_s": 0}, {"rate_per_s": -1}, {"rate_per_s": "fast"}, {}, {"rate": 5},
                 {"rate_per_s": 1e9}, [1]):
        resp = await qclient.patch(url, json=body, headers=h)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["code"] == "validation_error"
    resp = await qclient.patch(url, json={"rate_per_s": 2.5}, headers=h)
    assert resp.status_code == 200 and resp.json()["queue"]["rate"]["configured_per_s"] == 2.5
    resp = await qclient.patch(url, json={"prequeue": True}, headers=h)  # the sale is already open
    assert resp.status_code == 409
    other = await queue_event(qclient, database_url, open_=False)
    resp = await qclient.patch(url, json={"rate_per_s": 3}, headers=auth(other["api_key"]))
    assert resp.status_code == 404  # another organisation's event
    resp = await qclient.get(f"/v1/events/{event['id']}/stats", headers=auth(other["api_key"]))
    assert resp.status_code == 404
    resp = await qclient.get(f"/v1/events/{event['id']}/stats", headers=h)
    assert resp.status_code == 200 and set(resp.json()) >= {"event_id", "queue"}


async def test_buyers_who_join_while_the_event_is_paused_before_its_queue_opened_keep_their_places(
        qclient, database_url, settings):
    """An event paused right after opening (before its waiting room's first tick): buyers who join
    meanwhile are told 'waiting' with a place (nothing to shuffle: no pre-queue was set), keep polling,
    and are admitted in join order once the event opens again (they were lost as 'stalled' before)."""
    import asyncio


    event = await queue_event(qclient, database_url, rate=50, ga={"floor": 10})
    organiser = auth(event["api_key"])
    assert (await qclient.post(f"/v1/events/{event['id']}/pause", headers=organiser)).status_code == 200
    joined = [await join(qclient, event["id"], await new_buyer(qclient)) for _ in range(3)]
    assert [j["status"] for j in joined] == ["waiting"] * 3, joined
    assert [j["position"] for j in joined] == [1, 2, 3], joined
    async with leader(settings):
        await asyncio.sleep(0.5)
        paused = [await poll(qclient, event["id"], j["queue_token"]) for j in joined]
        assert [p["status"] for p in paused] == ["waiting"] * 3 and paused[0]["paused"] == "event_paused", paused
        assert (await qclient.post(f"/v1/events/{event['id']}/open", headers=organiser)).status_code == 200

        async def all_decided():
            got = [await poll(qclient, event["id"], j["queue_token"]) for j in joined]
            return got if all(g["status"] != "waiting" for g in got) else None

        decided = await wait_for(all_decided, timeout=10)
    assert decided and [d["status"] for d in decided] == ["admitted"] * 3, decided
