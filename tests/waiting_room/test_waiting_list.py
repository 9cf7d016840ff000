"""Sold out is not always final: while tickets are only held, waiting buyers keep their place ("sold out for
now"); a final sell-out ends the queue, and tickets that come back afterwards go to the event's waiting list,
offered to listed buyers in list order, each offer bound to its buyer and time-limited.

Everything runs against real Redis and Postgres: the in-process gateway, an admission leader in this process
(the same code as `flashgate worker admission`), the payment simulator, the ledger worker, the audit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.organisers.audit import audit_event
from gateway.sale import inventory
from gateway.store.keys import notify_key
from tests.gateway.test_checkout import drain_ledger
from tests.utils.factories import auth, new_org, open_event, seat_spec
from tests.waiting_room.conftest import RELAXED, app_client, join, leader, new_buyer, poll, queue_event, wait_for

pytestmark = pytest.mark.anyio

OFFER_S = 2  # the offer time of these tests (production default: 600 s)


async def admitted(client: httpx.AsyncClient, event_id: int, queue_token: str, timeout: float = 10) -> dict:
    async def check():
        body = await poll(client, event_id, queue_token)
        return body if body["status"] == "admitted" else None

    body = await wait_for(check, timeout=timeout)
    assert body, "the buyer was never admitted"
    return body


def as_buyer(buyer: dict[str, str], admission: str | None = None) -> dict[str, str]:
    headers = auth(buyer["buyer_token"])
    if admission:
        headers["X-Admission-Token"] = admission
    return headers


async def buy(client: httpx.AsyncClient, hold_id: str, headers: dict[str, str], key: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={"email": "fan@example.org"},
                             headers={**headers, "Idempotency-Key": key})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def queue_stats(client: httpx.AsyncClient, event: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    return resp.json()["queue"]


async def sold_out_event(client: httpx.AsyncClient, database_url: str, settings, *, capacity: int,
                         limit: int, sections: int = 0, seats: int = 0) -> tuple[dict, dict, dict, list[dict]]:
    """A queue-mode event whose tickets one admitted buyer bought (orders in Postgres, so refundable), the
    leader having seen the final sell-out. Returns (event, buyer, headers, orders)."""
    kwargs: dict[str, Any] = {"ga": {"floor": capacity}} if capacity else {}
    if sections:
        kwargs.update(sections=sections, rows=1, seats=seats)
    else:
        kwargs["sections"] = 0
    event = await queue_event(client, database_url, rate=100, limit=limit, **kwargs)
    eid = event["id"]
    owner = await new_buyer(client)
    joined = await join(client, eid, owner)
    adm = (await admitted(client, eid, joined["queue_token"]))["admission_token"]
    headers = as_buyer(owner, adm)
    orders = []
    body = {"ga": {"floor": capacity}} if capacity else {"seats": [f"A-1-{i + 1}" for i in range(seats)]}
    resp = await client.post(f"/v1/events/{eid}/holds", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    orders.append(await buy(client, resp.json()["hold_id"], headers, "owner-0001"))
    assert await wait_for(lambda: _sold_out(client, event))
    await drain_ledger(client.app)
    return event, owner, headers, orders


async def _sold_out(client, event) -> bool:
    return (await queue_stats(client, event))["sold_out"]


async def refund(client: httpx.AsyncClient, event: dict[str, Any], order_id: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/orders/{order_id}/refund", json={"reason": "cannot come"},
                             headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def listing(client: httpx.AsyncClient, event_id: int, buyer: dict[str, str]) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event_id}/waitlist", headers=as_buyer(buyer))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def audit_clean(client: httpx.AsyncClient, event_id: int) -> None:
    await drain_ledger(client.app)
    rt = client.app.gateway.runtime
    report = await audit_event(redis=rt.redis, pool=await rt.pg(), prefix=rt.prefix, event_id=event_id)
    assert report.ok, [c for c in report.checks if not c.ok]


async def test_sold_out_for_now_keeps_places_and_admission_resumes_when_a_hold_expires(database_url, settings, sim):
    async with app_client(settings, **RELAXED) as client:
        event = await queue_event(client, database_url, rate=100, ga={"floor": 2}, sections=0, ttl=5, limit=2)
        eid = event["id"]
        buyers = [await new_buyer(client) for _ in range(6)]
        tokens = [(await join(client, eid, b))["queue_token"] for b in buyers]
        # Holds count as coming back only in their last second, and an admitted buyer who does not act
        # stops counting as demand after 1 s: the queue stands still while the tickets are held, and the
        # admitted buyers ahead who never act do not keep the last one waiting long once they are free.
        async with leader(settings, queue_tickets_per_buyer=2, queue_expiring_window_s=1, queue_decision_s=1,
                          queue_poll_after_s=1):
            first = await admitted(client, eid, tokens[0])
            headers = as_buyer(buyers[0], first["admission_token"])
            resp = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 2}}, headers=headers)
            assert resp.status_code == 201, resp.text
            hold_id = resp.json()["hold_id"]

            async def for_now():
                body = await poll(client, eid, tokens[-1])
                return body if body.get("sold_out_for_now") else None

            body = await wait_for(for_now)
            assert body, "a waiting buyer was not told the tickets are only held"
            assert body["status"] == "waiting" and body["tickets_held"] == 2 and body["position"] >= 1
            place = body["place"]
            q = await queue_stats(client, event)
            assert q["sold_out"] is False and q["inventory"] == {"free": 0, "held": 2,
                                                                  "expiring": q["inventory"]["expiring"]}
            # a new buyer may still join: the sale is not over
            late = await new_buyer(client)
            joined_late = await join(client, eid, late, expect=201)
            assert joined_late["status"] == "waiting"
            late_token = joined_late["queue_token"]

            # the hold expires (the expiry worker's sweep): the tickets are free again, admission resumes
            async def swept():
                result = await inventory.expire(scripts=client.app.gateway.runtime.scripts,
                                                prefix=settings.redis_prefix, event_id=eid)
                return result["expired"] or None

            assert await wait_for(swept, timeout=15, interval=0.5)
            resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={},
                                     headers={**headers, "Idempotency-Key": "too-late-001"})
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "hold_expired"
            body = await admitted(client, eid, tokens[-1], timeout=20)
            assert body["place"] == place  # the same place, kept through "sold out for now"
            assert "sold_out_for_now" not in body

            # the final sell-out (everything sold, nothing held) ends the queue
            resp = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 2}},
                                     headers=as_buyer(buyers[-1], body["admission_token"]))
            assert resp.status_code == 201, resp.text
            await buy(client, resp.json()["hold_id"], as_buyer(buyers[-1], body["admission_token"]), "last-0001")
            # (the late buyer polls with the token of their join: joining again may already answer sold_out)

            async def told():
                body = await poll(client, eid, late_token)
                return body if body["status"] == "sold_out" else None

            assert (await wait_for(told))["waitlist"] == f"/v1/events/{eid}/waitlist"
            public = (await client.get(f"/v1/events/{eid}/public")).json()
            assert public["queue"]["sold_out"] is True and public["queue"]["waitlist"] == f"/v1/events/{eid}/waitlist"
            resp = await client.post(f"/v1/events/{eid}/queue", headers=auth((await new_buyer(client))["buyer_token"]))
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "sold_out"
            assert resp.json()["error"]["details"]["waitlist"] == f"/v1/events/{eid}/waitlist"
        await audit_clean(client, eid)


async def test_refunds_are_offered_in_list_order_bound_to_the_buyer_and_lapse_to_the_next(database_url, settings,
                                                                                          sim):
    async with app_client(settings, **RELAXED, waitlist_offer_ttl_s=OFFER_S) as client:
        early = await queue_event(client, database_url, rate=100, ga={"floor": 3}, sections=0)
        early_buyer = await new_buyer(client)
        resp = await client.post(f"/v1/events/{early['id']}/waitlist", headers=as_buyer(early_buyer))
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_sold_out"
        _, key = await new_org(database_url)
        no_queue = await open_event(client, key, seat_spec(sections=0, ga={"floor": 1}))
        resp = await client.post(f"/v1/events/{no_queue['id']}/waitlist", headers=as_buyer(early_buyer))
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "invalid_state"

        async with leader(settings, waitlist_offer_ttl_s=OFFER_S):
            event, owner, owner_headers, orders = await sold_out_event(client, database_url, settings,
                                                                       capacity=2, limit=2)
            eid = event["id"]
            listed = [await new_buyer(client) for _ in range(3)]
            numbers = []
            for i, b in enumerate(listed):
                body = {"email": f"fan{i}@example.org"} if i == 0 else None
                resp = await client.post(f"/v1/events/{eid}/waitlist", json=body, headers=as_buyer(b))
                assert resp.status_code == 201, resp.text
                assert resp.json()["status"] == "waiting" and resp.json()["position"] == i + 1
                numbers.append(resp.json()["number"])
            again = await client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(listed[0]))
            assert again.status_code == 200 and again.json()["number"] == numbers[0]  # one entry per buyer
            stranger = await new_buyer(client)
            resp = await client.post(f"/v1/events/{eid}/waitlist", json={"email": "not an address"},
                                     headers=as_buyer(stranger))
            assert resp.status_code == 422
            resp = await client.get(f"/v1/events/{eid}/waitlist", headers=as_buyer(stranger))
            assert resp.status_code == 404

            # a refund of 2 tickets: both offered to the first listed buyer (the per-buyer limit allows 2)
            refunded = await refund(client, event, orders[0]["order_id"])
            assert refunded["returned_to_sale"] == 2 and refunded["waitlist_offers"] == 1
            first = await listing(client, eid, listed[0])
            assert first["status"] == "offered" and first["offer"]["count"] == 2 and first["offer"]["ga"] == \
                {"floor": 2}
            second = await listing(client, eid, listed[1])
            assert second["status"] == "waiting" and second["position"] == 1
            # the event still shows sold out to everyone else: the admitted owner cannot hold them
            resp = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=owner_headers)
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "sold_out"
            # another listed buyer cannot take the offer
            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={}, headers=as_buyer(listed[1]))
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "no_offer"
            # nor more than offered
            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={"count": 3},
                                     headers=as_buyer(listed[0]))
            assert resp.status_code == 422

            # the first buyer takes 1 of 2; the other goes to the next listed buyer at once
            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={"count": 1},
                                     headers=as_buyer(listed[0]))
            assert resp.status_code == 201, resp.text
            taken = resp.json()
            assert taken["count"] == 1 and taken["ga"] == {"floor": 1}
            order = await buy(client, taken["hold_id"], as_buyer(listed[0], taken["admission_token"]), "wl-00001")
            assert order["status"] == "paid" and len(order["tickets"]) == 1
            assert (await listing(client, eid, listed[0]))["status"] == "accepted"
            second = await listing(client, eid, listed[1])
            assert second["status"] == "offered" and second["offer"]["count"] == 1

            # the second buyer lets the offer lapse: it passes to the third
            async def passed():
                body = await listing(client, eid, listed[2])
                return body if body["status"] == "offered" else None

            third = await wait_for(passed, timeout=OFFER_S + 10)
            assert third and third["offer"]["count"] == 1
            assert (await listing(client, eid, listed[1]))["status"] == "lapsed"
            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={}, headers=as_buyer(listed[1]))
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "no_offer"

            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={}, headers=as_buyer(listed[2]))
            assert resp.status_code == 201, resp.text
            await buy(client, resp.json()["hold_id"], as_buyer(listed[2], resp.json()["admission_token"]), "wl-00002")

            # the buyer whose offer lapsed may join again, at the back
            resp = await client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(listed[1]))
            assert resp.status_code == 201 and resp.json()["number"] == 4 and resp.json()["position"] == 1
            resp = await client.delete(f"/v1/events/{eid}/waitlist", headers=as_buyer(listed[1]))
            assert resp.status_code == 200 and resp.json()["status"] == "left"

            q = await queue_stats(client, event)
            assert q["sold_out"] is True
            assert q["waitlist"] == {"joined": 4, "length": 0, "open_offers": 0, "offers": 3, "offered_tickets": 4,
                                     "accepted": 2, "accepted_tickets": 2, "lapsed": 1, "declined": 0}
            # the first buyer left an e-mail address: their offer was queued for the notification worker
            rt = client.app.gateway.runtime
            mails = await rt.redis.xrange(notify_key(rt.prefix))
            assert any(b"fan0@example.org" in f[b"payload"] and b"waiting for you" in f[b"payload"]
                       for _, f in mails)
        await audit_clean(client, eid)


async def test_a_returned_seat_is_offered_by_label_and_leaving_passes_the_offer_on(database_url, settings, sim):
    async with app_client(settings, **RELAXED) as client:
        async with leader(settings):
            event, _, _, orders = await sold_out_event(client, database_url, settings, capacity=0, limit=2,
                                                       sections=1, seats=2)
            eid = event["id"]
            listed = [await new_buyer(client) for _ in range(2)]
            for b in listed:
                assert (await client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(b))).status_code == 201
            await refund(client, event, orders[0]["order_id"])
            offer = (await listing(client, eid, listed[0]))["offer"]
            assert offer["count"] == 2 and offer["seats"] == ["A-1-1", "A-1-2"]
            resp = await client.delete(f"/v1/events/{eid}/waitlist", headers=as_buyer(listed[0]))
            assert resp.status_code == 200 and resp.json()["status"] == "left"
            offer = (await listing(client, eid, listed[1]))["offer"]
            assert offer["seats"] == ["A-1-1", "A-1-2"]
            resp = await client.post(f"/v1/events/{eid}/waitlist/accept", json={"count": 1},
                                     headers=as_buyer(listed[1]))
            assert resp.status_code == 201 and resp.json()["seats"] == ["A-1-1"], resp.text
            taken = resp.json()
            # nobody else is listed: the seat not taken is free; the next buyer to join is offered it at once
            third, fourth = await new_buyer(client), await new_buyer(client)
            resp = await client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(third))
            assert resp.status_code == 201 and resp.json()["status"] == "offered", resp.text
            assert resp.json()["offer"]["seats"] == ["A-1-2"]
            resp = await client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(fourth))
            assert resp.json()["status"] == "waiting" and resp.json()["position"] == 1
            # a hold given back after the final sell-out: its seat is offered to the next listed buyer
            resp = await client.delete(f"/v1/holds/{taken['hold_id']}", headers=as_buyer(listed[1]))
            assert resp.status_code == 200, resp.text

            async def offered():
                body = await listing(client, eid, fourth)
                return body if body["status"] == "offered" else None

            body = await wait_for(offered)
            assert body and body["offer"]["seats"] == ["A-1-1"]
            q = await queue_stats(client, event)
            assert q["waitlist"]["declined"] == 1 and q["waitlist"]["accepted"] == 1
            assert q["waitlist"]["open_offers"] == 2 and q["sold_out"] is True
        await audit_clean(client, eid)


async def test_concurrent_refunds_and_accepts_never_oversell_and_follow_the_list(database_url, settings, sim):
    """12 buyers own one ticket each; 30 buyers join the list at once; 6 refunds land while every listed
    buyer and every owner tries to take tickets at the same time. Only the first 6 listed buyers get offers,
    only they get holds, nothing is oversold, and the audit of the whole history is clean."""
    capacity, listed_n, refunds = 12, 30, 6
    async with app_client(settings, **RELAXED) as client:
        event = await queue_event(client, database_url, rate=100, ga={"floor": capacity}, sections=0, limit=1)
        eid = event["id"]
        owners = [await new_buyer(client) for _ in range(capacity)]
        async with leader(settings, queue_tickets_per_buyer=1):
            tokens = [(await join(client, eid, b))["queue_token"] for b in owners]
            headers = []
            orders = []
            for i, (b, t) in enumerate(zip(owners, tokens)):
                adm = (await admitted(client, eid, t, timeout=20))["admission_token"]
                headers.append(as_buyer(b, adm))
                resp = await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=headers[-1])
                assert resp.status_code == 201, resp.text
                orders.append(await buy(client, resp.json()["hold_id"], headers[-1], f"own-{i:06d}"))
            assert await wait_for(lambda: _sold_out(client, event))
            await drain_ledger(client.app)

            listed = [await new_buyer(client) for _ in range(listed_n)]
            joins = await asyncio.gather(*(client.post(f"/v1/events/{eid}/waitlist", headers=as_buyer(b))
                                           for b in listed))
            assert all(r.status_code == 201 for r in joins)
            number = {b["buyer_id"]: r.json()["number"] for b, r in zip(listed, joins)}
            assert sorted(number.values()) == list(range(1, listed_n + 1))

            async def grab_accept(b):
                return await client.post(f"/v1/events/{eid}/waitlist/accept", json={}, headers=as_buyer(b))

            async def grab_hold(h):
                return await client.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=h)

            results = await asyncio.gather(
                *(refund(client, event, o["order_id"]) for o in orders[:refunds]),
                *(grab_accept(b) for b in listed), *(grab_hold(h) for h in headers))
            holds = [r for r in results[refunds + listed_n:]]
            assert all(r.status_code in (409, 429) for r in holds), [r.text for r in holds if r.status_code < 400]

            # every listed buyer: offered or accepted exactly for the first 6 list numbers, waiting after
            first = {b["buyer_id"] for b in listed if number[b["buyer_id"]] <= refunds}
            accepted = []
            for b in listed:
                body = await listing(client, eid, b)
                if b["buyer_id"] in first:
                    assert body["status"] in ("offered", "accepted"), body
                else:
                    assert body["status"] == "waiting" and body["position"] == number[b["buyer_id"]] - refunds
                resp = await grab_accept(b)
                if b["buyer_id"] in first:
                    assert resp.status_code in (201, 409), resp.text
                    if resp.status_code == 201:
                        accepted.append((b, resp.json()))
                else:
                    assert resp.status_code == 409 and resp.json()["error"]["code"] == "no_offer"
            accepted += [(b, r.json()) for b, r in zip(listed, results[refunds:refunds + listed_n])
                         if r.status_code == 201]
            assert sorted(number[b["buyer_id"]] for b, _ in accepted) == list(range(1, refunds + 1))
            for i, (b, h) in enumerate(accepted):
                await buy(client, h["hold_id"], as_buyer(b, h["admission_token"]), f"wl-{i:06d}")
            rt = client.app.gateway.runtime
            ga = await rt.redis.hgetall(f"{settings.redis_prefix}:{{ev:{eid}}}:ga")
            assert int(ga[b"sold:floor"]) + int(ga.get(b"held:floor", 0)) <= capacity
            assert int(ga[b"sold:floor"]) == capacity
        await audit_clean(client, eid)
