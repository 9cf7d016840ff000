"""The waiting room in the live figures: queue length, admitted, admission rate and ETA, and the funnel
from admitted buyers to holds to paid orders (in-process app, real Redis, a real admission leader)."""

from __future__ import annotations

import pytest

from tests.utils.factories import auth
from tests.waiting_room.conftest import RELAXED, app_client, join, leader, new_buyer, poll, queue_event, wait_for

pytestmark = pytest.mark.anyio


async def test_queue_and_funnel_figures(settings, database_url, sim):
    async with app_client(settings, **RELAXED) as client:
        event = await queue_event(client, database_url, rate=2, sections=1, rows=2, seats=10)
        eid, key = event["id"], event["api_key"]
        buyers = [await new_buyer(client) for _ in range(6)]
        tokens = [(await join(client, eid, b))["queue_token"] for b in buyers]
        before = (await client.get(f"/v1/events/{eid}/stats", headers=auth(key))).json()
        assert before["admission"]["queue_enabled"] is True and before["admission"]["length"] == 6
        assert before["funnel"]["admitted"] == 0 and before["admission"]["phase"] == "open"
        async with leader(settings):
            async def first_two():
                states = [await poll(client, eid, t) for t in tokens[:2]]
                return states if all(s["status"] == "admitted" for s in states) else None

            admitted = await wait_for(first_two)
            assert admitted, "the leader admitted nobody"
            me = {"Authorization": f"Bearer {buyers[0]['buyer_token']}",
                  "X-Admission-Token": admitted[0]["admission_token"]}
            h = await client.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-1"]}, headers=me)
            assert h.status_code == 201, h.text
            paid = await client.post(f"/v1/holds/{h.json()['hold_id']}/checkout", json={},
                                     headers={**me, "Idempotency-Key": "queue-fig-0001"})
            assert paid.status_code == 201, paid.text
            f = (await client.get(f"/v1/events/{eid}/stats", headers=auth(key))).json()
        a, fu = f["admission"], f["funnel"]
        assert a["admitted"] == f["queue"]["admitted"] >= 2 and a["length"] == f["queue"]["length"] <= 4
        assert a["rate_per_s"] == f["queue"]["rate"]["effective_per_s"] > 0
        assert a["eta_s"] == f["queue"]["eta_last_s"]
        assert fu["admitted"] == a["admitted"] and fu["holds"] == 1 and fu["paid"] == 1
        assert fu["dropped"]["admitted_without_hold"] == a["admitted"] - 1
