"""Free tickets (total 0) need no payment: confirmed without calling the provider (which refuses an
amount of 0), recorded as a capture of 0 by the `free` provider, refundable, and the audit passes."""

from __future__ import annotations

import pytest

from gateway.organisers.audit import audit_event
from gateway.sale.checkout import FREE_PROVIDER
from tests.gateway.test_checkout import drain_ledger
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def free_event(client, database_url, sim):
    _, key = await new_org(database_url)
    spec = seat_spec(sections=1, rows=1, seats=4, ga={"guest": 10})
    spec["price_tiers"] = {"p1": 0, "p2": 0}
    spec["ga"][0]["price_minor"] = 0
    ev = await open_event(client, key, spec)
    ev["api_key"] = key
    return ev


async def test_free_order_is_confirmed_without_the_provider_and_audits_clean(client, app, free_event, sim, pg):
    me = await buyer(client)
    orders = []
    for body in ({"seats": ["A-1-1", "A-1-2"]}, {"ga": {"guest": 3}}):
        hold = await client.post(f"/v1/events/{free_event['id']}/holds", json=body, headers=me)
        assert hold.status_code == 201 and hold.json()["total_minor"] == 0, hold.text
        resp = await client.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                                 headers={**me, "Idempotency-Key": f"free-{len(orders):06d}"})
        assert resp.status_code == 201, resp.text
        order = resp.json()
        assert order["status"] == "paid" and order["total_minor"] == 0 and len(order["tickets"]) in (2, 3)
        orders.append(order)
    stats = sim.get("/_stats").json()
    assert stats.get("authorize", 0) == 0 and stats.get("capture", 0) == 0, stats

    await drain_ledger(app)
    rows = await pg.fetch("SELECT provider, kind, amount_minor FROM payments WHERE order_id = ANY($1::uuid[])",
                          [o["order_id"] for o in orders])
    assert sorted((r["provider"], r["kind"], r["amount_minor"]) for r in rows) == \
        [(FREE_PROVIDER, "capture", 0)] * 2

    refund = await client.post(f"/v1/orders/{orders[0]['order_id']}/refund", json={},
                               headers=auth(free_event["api_key"]))
    assert refund.status_code == 200 and refund.json()["status"] == "refunded", refund.text
    assert sim.get("/_stats").json().get("refund", 0) == 0
    await drain_ledger(app)
    kinds = await pg.fetch("SELECT kind, amount_minor FROM payments WHERE order_id = $1::uuid", orders[0]["order_id"])
    assert sorted((r["kind"], r["amount_minor"]) for r in kinds) == [("capture", 0), ("refund", 0)]

    rt = app.gateway.runtime
    report = await audit_event(redis=rt.redis, pool=await rt.pg(), prefix=rt.prefix, event_id=free_event["id"])
    assert report.ok, [c for c in report.checks if not c.ok]


async def test_a_request_the_provider_refuses_is_a_4xx_and_keeps_the_hold(client, app, database_url, sim):
    """A provider may refuse a payment request itself (an amount or currency it does not take): the buyer
    gets 409 in the common shape, not a 500, and the hold is held again for another try."""
    from gateway.providers.payments import PaymentRejected

    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)).json()
    provider = app.gateway.checkout.provider

    class Refusing:
        name = provider.name

        async def authorize(self, **_: object) -> None:
            raise PaymentRejected("bad_request", "amount not accepted")

    app.gateway.checkout.provider = Refusing()
    try:
        resp = await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                                 headers={**me, "Idempotency-Key": "refused-0001"})
    finally:
        app.gateway.checkout.provider = provider
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "invalid_state", resp.text
    again = await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                              headers={**me, "Idempotency-Key": "refused-0002"})
    assert again.status_code == 201, again.text  # the hold was kept: another attempt pays
