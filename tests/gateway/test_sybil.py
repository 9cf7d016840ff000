"""Sybil protections at their defaults: buyer-token minting per address and per network prefix, tickets
held at once per address per event, and the optional proof of work on joining a waiting room
(docs/waiting-room.md, "Sybil protections")."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.core.config import Settings
from gateway.store.keys import event_key
from gateway.waiting_room.pow import leading_zero_bits, solve
from tests.utils.factories import auth, new_org, open_event, seat_spec
from tests.waiting_room.conftest import RELAXED, queue_event

pytestmark = pytest.mark.anyio

SYBIL = ("buyer_token_per_ip_per_s", "buyer_token_per_ip_burst", "buyer_token_per_prefix_per_s",
         "buyer_token_per_prefix_burst", "holds_per_address_factor", "queue_pow", "queue_pow_bits")
DEFAULTS = {name: Settings.model_fields[name].default for name in SYBIL}  # whatever the environment says
# The test client connects from a documentation address, not loopback (loopback is this host: not limited).
PEER = "192.0.2.200"
PROXY = {"trusted_proxies": f"{PEER}/32"}  # the test client as a trusted proxy: X-Forwarded-For names the buyer
# Where a test counts up to a burst, the buckets refill (almost) never, so the count does not depend on speed.
STILL = {"buyer_token_per_ip_per_s": 1e-9, "buyer_token_per_prefix_per_s": 1e-9}


@contextlib.asynccontextmanager
async def gateway(settings: Settings, peer: str = PEER, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    from gateway.api.app import create_app

    edge = create_app(settings.model_copy(update={**RELAXED, **DEFAULTS, **overrides}))
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client


def at(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def mint(client: httpx.AsyncClient, address: str | None = None) -> httpx.Response:
    return await client.post("/v1/buyer-token", headers=at(address) if address else None)


async def mint_until_refused(client: httpx.AsyncClient, addresses: list[str]) -> tuple[int, httpx.Response | None]:
    for i, address in enumerate(addresses):
        resp = await mint(client, address)
        if resp.status_code != 201:
            return i, resp
    return len(addresses), None


def assert_rate_limited(resp: httpx.Response, scope: str) -> None:
    assert resp.status_code == 429, resp.text
    error = resp.json()["error"]
    assert error["code"] == "rate_limited" and error["details"]["scope"] == scope
    assert int(resp.headers["Retry-After"]) >= 1 and error["details"]["retry_after_s"] >= 1
    assert "buyer_token" not in resp.text


# -- buyer tokens ------------------------------------------------------------------------------------

def test_only_loopback_and_the_trusted_proxies_themselves_are_exempt():
    from gateway.api.clientip import ClientAddresses
    from gateway.api.sybil import AddressKeys

    addresses = ClientAddresses("10.0.0.0/8")
    keys = AddressKeys(Settings(secret_key="test-" + "x" * 40), addresses)
    assert keys.of(addresses.resolve("10.1.1.1", None)) is None  # the proxy's own request
    # a client naming a proxy in its own header: the proxy appends the real address, which counts
    assert keys.of(addresses.resolve("10.1.1.1", "10.2.2.2, 203.0.113.9")) == ("203.0.113.9", "203.0.113.0/24")
    assert keys.of("2001:db8:1:2::77") == ("2001:db8:1:2::/64", "2001:db8:1::/48")
    assert keys.of("::ffff:198.51.100.7") == ("198.51.100.7", "198.51.100.0/24")
    untrusting = AddressKeys(Settings(secret_key="test-" + "x" * 40), ClientAddresses(""))
    assert untrusting.of("192.0.2.200") == ("192.0.2.200", "192.0.2.0/24")
    assert untrusting.of("127.0.0.1") is None and untrusting.of("::1") is None and untrusting.of("127.1.2.3") is None
    # In production loopback is an address like any other (unless the operator exempts it).
    production = AddressKeys(Settings(secret_key=secrets.token_urlsafe(48), environment="production"),
                             ClientAddresses(""))
    assert production.of("127.0.0.1") == ("127.0.0.1", "127.0.0.0/24")
    exempted = AddressKeys(Settings(secret_key="test-" + "x" * 40, environment="test", sybil_exempt_loopback=False),
                           ClientAddresses(""))
    assert exempted.of("::1") == ("::/64", "::/48")


async def test_this_host_is_not_limited(settings):
    burst = int(DEFAULTS["buyer_token_per_ip_burst"])
    async with gateway(settings, peer="127.0.0.1", **STILL) as client:  # a tool or load generator on this host
        made, _ = await mint_until_refused(client, ["203.0.113.7"] * (burst + 5))
        assert made == burst + 5


async def test_one_address_minting_past_its_burst_is_refused_and_another_is_not(settings):
    burst = int(DEFAULTS["buyer_token_per_ip_burst"])
    async with gateway(settings, **PROXY, **STILL) as client:
        made, refused = await mint_until_refused(client, ["203.0.113.7"] * (burst + 5))
        assert made == burst and refused is not None
        assert_rate_limited(refused, "address")
        other = await mint(client, "198.51.100.20")
        assert other.status_code == 201 and other.json()["buyer_token"]


async def test_an_ipv6_client_is_limited_per_64_not_per_address(settings):
    burst = int(DEFAULTS["buyer_token_per_ip_burst"])
    async with gateway(settings, **PROXY, **STILL) as client:
        rotating = [f"2001:db8:1:2::{i:x}" for i in range(1, burst + 6)]  # one subscriber's /64
        made, refused = await mint_until_refused(client, rotating)
        assert made == burst and refused is not None
        assert_rate_limited(refused, "address")
        assert (await mint(client, "2001:db8:1:3::1")).status_code == 201  # the next /64


async def test_a_network_prefix_is_limited_beyond_its_addresses(settings):
    async with gateway(settings, **PROXY, **STILL, buyer_token_per_prefix_burst=30) as client:
        made, refused = await mint_until_refused(client, [f"192.0.2.{i}" for i in range(1, 60)])
        assert made == 30 and refused is not None
        assert_rate_limited(refused, "prefix")
        assert (await mint(client, "192.0.3.1")).status_code == 201  # another /24


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(settings):
    burst = int(DEFAULTS["buyer_token_per_ip_burst"])
    async with gateway(settings, **STILL) as client:  # no trusted proxies: every request is the test client's
        made, refused = await mint_until_refused(client, [f"203.0.113.{i}" for i in range(1, burst + 6)])
        assert made == burst and refused is not None
        assert_rate_limited(refused, "address")


async def test_a_load_generator_naming_its_buyers_spreads_over_addresses(settings):
    # What the k6 buyers do (loadtest/lib/buyer.js): buyer n is 10.(n>>16).(n>>8).(n&255); 600 buyers,
    # three /24 networks, all served at the defaults, and the trusted generator's own seeding calls too.
    async with gateway(settings, **PROXY) as client:
        addresses = [f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}" for n in range(1, 601)]
        made, refused = await mint_until_refused(client, addresses)
        assert made == 600, refused.text if refused else ""
        for _ in range(50):
            assert (await mint(client)).status_code == 201  # no X-Forwarded-For: the trusted proxy itself


# -- tickets held per address ------------------------------------------------------------------------

async def ga_event(client: httpx.AsyncClient, database_url: str, *, limit: int = 2, ttl: int = 600) -> dict[str, Any]:
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(rows=1, seats=40, ga={"floor": 100}, limit=limit, ttl=ttl))
    event["api_key"] = key
    return event


async def buyer_at(client: httpx.AsyncClient, address: str) -> dict[str, str]:
    resp = await mint(client, address)
    assert resp.status_code == 201, resp.text
    return {**auth(resp.json()["buyer_token"]), **at(address)}


async def hold(client: httpx.AsyncClient, event_id: int, who: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/v1/events/{event_id}/holds", json=body, headers=who)


async def held_now(client: httpx.AsyncClient, event: dict[str, Any]) -> int:
    stats = (await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
    return stats["totals"]["held"]


def assert_address_refused(resp: httpx.Response, limit: int) -> None:
    assert resp.status_code == 429, resp.text
    error = resp.json()["error"]
    assert error["code"] == "address_limit_exceeded" and error["details"]["limit"] == limit
    assert int(resp.headers["Retry-After"]) >= 1 and "release" in error["message"]


async def test_one_address_cannot_hold_past_its_cap_across_buyer_tokens(settings, database_url):
    cap = int(DEFAULTS["holds_per_address_factor"] * 2)  # per-buyer limit 2: 8 tickets at once per address
    async with gateway(settings, **PROXY) as client:
        event = await ga_event(client, database_url, limit=2)
        eid = event["id"]
        buyers = [await buyer_at(client, "203.0.113.50") for _ in range(cap // 2 + 1)]
        for who in buyers[:-2]:
            assert (await hold(client, eid, who, {"ga": {"floor": 2}})).status_code == 201
        assert (await hold(client, eid, buyers[-2], {"seats": ["A-1-1", "A-1-2"]})).status_code == 201
        assert await held_now(client, event) == cap
        # the next ticket from the same address, whatever the kind of hold: refused, nothing held
        assert_address_refused(await hold(client, eid, buyers[-1], {"ga": {"floor": 1}}), cap)
        assert_address_refused(await hold(client, eid, buyers[-1], {"seats": ["A-1-3"]}), cap)
        assert_address_refused(await hold(client, eid, buyers[-1], {"best": {"section": "A", "count": 1}}), cap)
        assert await held_now(client, event) == cap
        # a buyer elsewhere is unaffected
        elsewhere = await buyer_at(client, "198.51.100.77")
        assert (await hold(client, eid, elsewhere, {"ga": {"floor": 2}})).status_code == 201


async def test_release_expiry_and_sale_give_the_address_budget_back(settings, database_url, redis_sync, sim):
    cap = int(DEFAULTS["holds_per_address_factor"] * 1)  # per-buyer limit 1: 4 tickets at once
    address = "203.0.113.60"
    async with gateway(settings, **PROXY) as client:
        event = await ga_event(client, database_url, limit=1)
        eid = event["id"]
        buyers = [await buyer_at(client, address) for _ in range(cap + 1)]
        holds = []
        for who in buyers[:cap]:
            resp = await hold(client, eid, who, {"ga": {"floor": 1}})
            assert resp.status_code == 201, resp.text
            holds.append(resp.json()["hold_id"])
        last = buyers[cap]
        assert_address_refused(await hold(client, eid, last, {"ga": {"floor": 1}}), cap)

        # released: one ticket of budget back
        assert (await client.delete(f"/v1/holds/{holds[0]}", headers=buyers[0])).status_code == 200
        resp = await hold(client, eid, last, {"ga": {"floor": 1}})
        assert resp.status_code == 201, resp.text
        assert_address_refused(await hold(client, eid, buyers[0], {"ga": {"floor": 1}}), cap)

        # expired (its expiry moved into the past on the real Redis): back at the next hold
        redis_sync.zadd(event_key(settings.redis_prefix, eid, "holds"), {holds[1]: int(time.time() * 1000) - 1000})
        resp = await hold(client, eid, await buyer_at(client, address), {"ga": {"floor": 1}})
        assert resp.status_code == 201, resp.text

        # sold: the cap counts tickets held, not bought, so a sale gives the ticket back too
        paid = await client.post(f"/v1/holds/{holds[2]}/checkout", json={"email": "fan@example.org"},
                                 headers={**buyers[2], "Idempotency-Key": "sybil-sale-0001"})
        assert paid.status_code == 201, paid.text
        other = await buyer_at(client, address)
        assert (await hold(client, eid, other, {"ga": {"floor": 1}})).status_code == 201
        assert_address_refused(await hold(client, eid, await buyer_at(client, address), {"ga": {"floor": 1}}), cap)


async def test_the_expiry_worker_gives_the_address_budget_back(settings, database_url, redis_sync):
    from gateway.core.runtime import Runtime
    from gateway.sale import inventory

    async with gateway(settings, **PROXY) as client:
        event = await ga_event(client, database_url, limit=1)
        eid = event["id"]
        buyers = [await buyer_at(client, "203.0.113.61") for _ in range(5)]
        ids = [(await hold(client, eid, who, {"ga": {"floor": 1}})).json()["hold_id"] for who in buyers[:4]]
        assert_address_refused(await hold(client, eid, buyers[4], {"ga": {"floor": 1}}), 4)
        past = int(time.time() * 1000) - 1000
        redis_sync.zadd(event_key(settings.redis_prefix, eid, "holds"), {hold_id: past for hold_id in ids})
        runtime = Runtime.from_settings(settings)
        try:
            swept = await inventory.expire(scripts=runtime.scripts, prefix=settings.redis_prefix, event_id=eid)
        finally:
            await runtime.close()
        assert swept
        assert not redis_sync.hgetall(event_key(settings.redis_prefix, eid, "addrs"))
        for who in buyers[1:]:
            assert (await hold(client, eid, who, {"ga": {"floor": 1}})).status_code == 201


# -- proof of work on joining ------------------------------------------------------------------------

async def join(client: httpx.AsyncClient, event_id: int, token: str, proof: str | None = None) -> httpx.Response:
    headers = auth(token)
    if proof is not None:
        headers["X-Proof-Of-Work"] = proof
    return await client.post(f"/v1/events/{event_id}/queue", headers=headers)


async def queue_joined(client: httpx.AsyncClient, event: dict[str, Any]) -> int:
    stats = (await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
    return stats["queue"]["joined"]


def proof_with(challenge: str, low: int, high: int) -> str:
    """A proof whose hash has at least `low` and fewer than `high` leading zero bits."""
    for n in range(10**7):
        proof = f"{challenge}:{n}"
        if low <= leading_zero_bits(hashlib.sha256(proof.encode()).digest()) < high:
            return proof
    raise AssertionError("no such nonce")


def challenge_of(resp: httpx.Response, reason: str) -> dict[str, Any]:
    assert resp.status_code == 428, resp.text
    error = resp.json()["error"]
    assert error["code"] == "proof_of_work_required" and error["details"]["reason"] == reason
    assert "X-Proof-Of-Work" in error["message"]
    return error["details"]


async def test_proof_of_work_is_off_by_default(settings, database_url):
    assert Settings(secret_key="test-" + "x" * 40).queue_pow is False
    async with gateway(settings) as client:
        event = await queue_event(client, database_url)
        token = (await mint(client)).json()["buyer_token"]
        assert (await join(client, event["id"], token)).status_code == 201


async def test_a_join_needs_a_solved_challenge_when_proof_of_work_is_on(settings, database_url):
    bits = 8
    async with gateway(settings, queue_pow=True, queue_pow_bits=bits) as client:
        event = await queue_event(client, database_url)
        eid = event["id"]
        me = (await mint(client)).json()["buyer_token"]
        details = challenge_of(await join(client, eid, me), "missing")
        assert details["difficulty_bits"] == bits and details["algorithm"] == "sha256-leading-zero-bits"
        challenge = details["challenge"]
        challenge_of(await join(client, eid, me, proof_with(challenge, 0, bits)), "wrong_nonce")
        challenge_of(await join(client, eid, me, "garbage"), "malformed")
        assert await queue_joined(client, event) == 0  # nothing joined

        proof = solve(challenge, bits)
        someone_else = (await mint(client)).json()["buyer_token"]
        challenge_of(await join(client, eid, someone_else, proof), "not_yours")
        other_event = await queue_event(client, database_url)
        challenge_of(await join(client, other_event["id"], me, proof), "not_yours")

        first = await join(client, eid, me, proof)
        assert first.status_code == 201, first.text
        again = await join(client, eid, me, proof)  # a refresh rejoins with the same proof: same place
        assert again.status_code == 200 and again.json()["place"] == first.json()["place"]
        assert await queue_joined(client, event) == 1


async def test_a_proof_at_a_lower_difficulty_is_refused_after_a_raise(settings, database_url):
    async with gateway(settings, queue_pow=True, queue_pow_bits=4) as client:
        event = await queue_event(client, database_url)
        me = (await mint(client)).json()["buyer_token"]
        easy = challenge_of(await join(client, event["id"], me), "missing")["challenge"]
    async with gateway(settings, queue_pow=True, queue_pow_bits=10) as client:
        challenge_of(await join(client, event["id"], me, proof_with(easy, 4, 10)), "too_easy")
