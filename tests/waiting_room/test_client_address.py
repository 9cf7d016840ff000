"""Per-address limits behind a proxy: X-Forwarded-For is believed from trusted proxies only."""

from __future__ import annotations

import pytest

from gateway.api.clientip import ClientAddresses
from tests.utils.factories import auth
from tests.waiting_room.conftest import RELAXED, app_client, new_buyer, queue_event

pytestmark = pytest.mark.anyio


def test_right_most_untrusted_hop_is_the_client():
    a = ClientAddresses("127.0.0.1/32, 10.0.0.0/8")
    assert a.resolve("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    # a client writing its own header: the proxies append what they saw, the left part is ignored
    assert a.resolve("127.0.0.1", "198.51.100.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert a.resolve("127.0.0.1", "2001:db8::1") == "2001:db8::1"
    # an untrusted peer's header is never believed
    assert a.resolve("192.0.2.9", "203.0.113.7") == "192.0.2.9"
    # garbage in the header: the peer
    assert a.resolve("127.0.0.1", "not-an-address") == "127.0.0.1"
    assert a.resolve("127.0.0.1", "") == "127.0.0.1"
    # only trusted hops: the peer
    assert a.resolve("127.0.0.1", "10.0.0.1, 10.0.0.2") == "127.0.0.1"
    assert ClientAddresses("").resolve("127.0.0.1", "203.0.113.7") == "127.0.0.1"


def test_a_bad_network_is_refused_at_start():
    with pytest.raises(ValueError):
        ClientAddresses("10.0.0.0/33")


async def _join_statuses(client, event_id: int, addresses: list[str]) -> list[int]:
    statuses = []
    for address in addresses:
        buyer = await new_buyer(client)
        resp = await client.post(f"/v1/events/{event_id}/queue",
                                 headers={**auth(buyer["buyer_token"]), "X-Forwarded-For": address})
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            body = resp.json()
            assert body["error"]["code"] == "rate_limited" and resp.headers["Retry-After"]
    return statuses


async def test_buyers_behind_a_trusted_proxy_each_get_their_own_limit(settings, database_url):
    limits = {**RELAXED, "queue_join_per_ip_per_s": 1.0}  # burst 5 per address
    async with app_client(settings, **limits, trusted_proxies="127.0.0.1/32") as client:
        event = await queue_event(client, database_url)
        distinct = await _join_statuses(client, event["id"], [f"203.0.113.{i}" for i in range(12)])
        assert distinct == [201] * 12
        same = await _join_statuses(client, event["id"], ["198.51.100.4"] * 8)
        assert same[:5] == [201] * 5 and 429 in same[5:]


async def test_a_spoofed_header_from_an_untrusted_peer_changes_nothing(settings, database_url):
    limits = {**RELAXED, "queue_join_per_ip_per_s": 1.0}
    async with app_client(settings, **limits) as client:  # no trusted proxies: the default
        event = await queue_event(client, database_url)
        statuses = await _join_statuses(client, event["id"], [f"203.0.113.{i}" for i in range(8)])
        assert statuses[:5] == [201] * 5 and 429 in statuses[5:]
