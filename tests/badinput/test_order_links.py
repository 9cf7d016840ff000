"""The order token never goes into a URL: the order page opens with a short-lived link of its own,
and answers carrying tickets or tokens are not cached nor sent on as a Referer."""

from __future__ import annotations

import time

import pytest

from gateway.orders.tickets import ORDER_LINK_TTL_S, order_page_link
from tests.gateway.test_errors import assert_shape
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def order(client, database_url, sim):
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)).json()
    resp = await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                             headers={**me, "Idempotency-Key": "link-test-1"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    return resp.json()


async def test_order_page_opens_with_its_link_and_not_with_the_order_token(client, order):
    got = await client.get(f"/v1/orders/{order['order_id']}", headers=auth(order["order_token"]))
    assert got.status_code == 200
    assert got.headers["cache-control"] == "no-store" and got.headers["referrer-policy"] == "no-referrer"
    link = got.json()["order_page_url"]
    assert order["order_token"] not in link
    assert time.time() < got.json()["order_page_expires_at"] <= time.time() + ORDER_LINK_TTL_S + 1

    page = await client.get(link)
    assert page.status_code == 200 and page.text.count("<svg") == 1
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"

    # The order token in the URL opens nothing, on the page or the API.
    assert_shape(await client.get(f"/orders/{order['order_id']}", params={"token": order["order_token"]}),
                 401, "invalid_token")
    assert_shape(await client.get(f"/v1/orders/{order['order_id']}", params={"token": order["order_token"]}),
                 401, "unauthorized")
    # Nor does a link in place of the order token.
    token = link.split("token=", 1)[1]
    assert_shape(await client.get(f"/v1/orders/{order['order_id']}", headers=auth(token)), 401, "invalid_token")


async def test_order_page_link_expires_and_is_for_one_order(client, app, order):
    signer = app.gateway.checkout.signer
    old = order_page_link(signer, order["order_id"], order["event_id"], now=time.time() - ORDER_LINK_TTL_S - 1)
    assert_shape(await client.get(old["order_page_url"]), 401, "token_expired")
    other = order_page_link(signer, "00000000-0000-0000-0000-000000000000", order["event_id"])
    token = other["order_page_url"].split("token=", 1)[1]
    assert_shape(await client.get(f"/orders/{order['order_id']}", params={"token": token}), 403, "forbidden")
