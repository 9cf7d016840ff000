"""Promises of the buyer-facing docs (waiting room, checkout, inventory, providers, buyer page) that no
other test checked: each test fails when the documented behaviour changes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid

import httpx
import orjson
import pytest

from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec
from tests.waiting_room.conftest import app_client, join, leader, new_buyer, poll, queue_event, wait_for

pytestmark = pytest.mark.anyio


def _payload(token: str) -> dict:
    body = token.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


async def test_an_admission_expires_at_the_same_moment_on_every_poll_and_every_worker(database_url, settings):
    """docs/waiting-room.md, "Admission": valid `queue_admission_ttl_s` from the moment of admission, the same
    expiry on every poll and every worker; polling does not extend it."""
    ttl = 900
    fast = {"queue_poll_per_token_per_s": 1e6, "queue_cache_s": 0.05, "queue_admission_ttl_s": ttl}
    async with app_client(settings, **fast) as one, app_client(settings, **fast) as two:
        event = await queue_event(one, database_url, rate=50, ga={"floor": 10})
        me = await new_buyer(one)
        token = (await join(one, event["id"], me))["queue_token"]
        async with leader(settings):
            async def admitted():
                body = await poll(one, event["id"], token)
                return body if body["status"] == "admitted" else None

            first = await wait_for(admitted)
        assert first, "not admitted"
        await asyncio.sleep(1.2)  # a later poll, past a whole-second boundary
        later = [await poll(two, event["id"], token), await poll(one, event["id"], token)]
        assert [b["status"] for b in later] == ["admitted", "admitted"]
        assert {b["expires_at"] for b in later} == {first["expires_at"]}
        for body in [first, *later]:
            assert _payload(body["admission_token"])["exp"] == first["expires_at"]
        log = (await one.get(f"/v1/events/{event['id']}/queue/log")).json()
        admitted_at = log["admitted"][first["place"] - log["from"]]
        assert first["expires_at"] == admitted_at + ttl


async def test_the_admission_log_has_at_most_10000_places_a_page_and_no_buyer_identity(qclient, database_url,
                                                                                       settings):
    """docs/waiting-room.md, "Verifying the order": at most 10,000 places per page; no buyer identity in it."""
    event = await queue_event(qclient, database_url, rate=50, ga={"floor": 10})
    me = await new_buyer(qclient)
    joined = await join(qclient, event["id"], me)
    async with leader(settings):
        async def admitted():
            body = await poll(qclient, event["id"], joined["queue_token"])
            return body if body["status"] == "admitted" else None

        assert await wait_for(admitted), "not admitted"
    url = f"/v1/events/{event['id']}/queue/log"
    page = await qclient.get(url, params={"from": 1, "count": 10_000})
    assert page.status_code == 200, page.text
    assert page.json()["upto"] >= 1 and len(page.json()["admitted"]) >= 1
    for who in (me["buyer_id"], me["buyer_token"], joined["queue_token"]):
        assert who not in page.text
    too_many = await qclient.get(url, params={"from": 1, "count": 10_001})
    assert too_many.status_code == 422, too_many.text


async def test_the_admission_rate_is_taken_up_to_100000_per_second(qclient, database_url):
    """docs/waiting-room.md, API: `{"rate_per_s": 0 < x ≤ 100000}`, `422` on bad input."""
    event = await queue_event(qclient, database_url, rate=10)
    url, h = f"/v1/events/{event['id']}/admission", auth(event["api_key"])
    ok = await qclient.patch(url, json={"rate_per_s": 100_000}, headers=h)
    assert ok.status_code == 200 and ok.json()["queue"]["rate"]["configured_per_s"] == 100_000, ok.text
    for rate in (100_000.5, 0.0):
        bad = await qclient.patch(url, json={"rate_per_s": rate}, headers=h)
        assert bad.status_code == 422, (rate, bad.text)
    tiny = await qclient.patch(url, json={"rate_per_s": 0.001}, headers=h)
    assert tiny.status_code == 200, tiny.text


async def test_order_ids_are_uuidv5_and_ticket_ids_follow_from_order_and_serial(client, database_url, sim):
    """docs/checkout.md: the order id is derived from (event, hold, buyer, key), a UUIDv5; a ticket id is the
    MD5 of `<order id>:<serial>` read as a UUID; hold ids are `<event id>-<random>`."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    holds = []
    for _ in range(2):
        resp = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 2}}, headers=me)
        assert resp.status_code == 201, resp.text
        holds.append(resp.json()["hold_id"])
    assert all(h.startswith(f"{event['id']}-") and len(h) > len(f"{event['id']}-") for h in holds)
    assert holds[0] != holds[1]

    async def pay(hold_id, idem):
        resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={"email": "fan@example.org"},
                                 headers={**me, "Idempotency-Key": idem})
        assert resp.status_code == 201, resp.text
        return resp.json()

    first = await pay(holds[0], "claims-key-1")
    again = await pay(holds[0], "claims-key-1")
    other = await pay(holds[1], "claims-key-2")
    assert uuid.UUID(first["order_id"]).version == 5
    # docs/checkout.md, "Orders, refunds": the checkout answer's order-page link expires after 10 minutes
    assert 598 <= first["order_page_expires_at"] - time.time() <= 601
    assert again["order_id"] == first["order_id"] and other["order_id"] != first["order_id"]
    assert len(first["tickets"]) == 2
    for ticket in first["tickets"]:
        expected = uuid.UUID(hashlib.md5(f"{first['order_id']}:{ticket['serial']}".encode()).hexdigest())
        assert ticket["ticket_id"] == str(expected)


async def test_public_info_and_the_size_of_one_hold(client, database_url):
    """docs/buyer-demo.md and docs/inventory.md: `max_per_hold` 50 (`max_seats_per_hold`) bounds one request,
    whatever the per-buyer limit; a GA hold is for one type; events never opened answer `404 event_not_found`."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(sections=1, rows=6, seats=10, ga={"floor": 100, "balcony": 5},
                                                    limit=80))
    public = (await client.get(f"/v1/events/{event['id']}/public")).json()
    assert public["max_per_hold"] == 50 and public["per_buyer_limit"] == 80 and public["hold_ttl_s"] == 600
    me = await buyer(client)
    base = f"/v1/events/{event['id']}/holds"
    seats = [f"A-{r}-{s}" for r in range(1, 7) for s in range(1, 11)]
    # ... and a GA hold is for one ticket type (docs/inventory.md, "Decisions")
    for body in ({"seats": seats[:51]}, {"ga": {"floor": 51}}, {"best": {"section": "A", "count": 51}},
                 {"ga": {"floor": 1, "balcony": 1}}):
        resp = await client.post(base, json=body, headers=me)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error", (body, resp.text)
    resp = await client.post(base, json={"seats": seats[:50]}, headers=me)
    assert resp.status_code == 201, resp.text
    draft = await client.post("/v1/events", json=seat_spec(), headers=auth(key))
    assert draft.status_code == 201, draft.text
    never_opened = await client.get(f"/v1/events/{draft.json()['id']}/public")
    assert never_opened.status_code == 404 and never_opened.json()["error"]["code"] == "event_not_found"


async def test_the_order_list_takes_at_most_1000_a_page(client, database_url):
    """docs/checkout.md, "Orders, refunds": `?limit=` up to 1,000."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec())
    url = f"/v1/events/{event['id']}/orders"
    ok = await client.get(url, params={"limit": 1000}, headers=auth(key))
    assert ok.status_code == 200 and ok.json()["orders"] == [], ok.text
    bad = await client.get(url, params={"limit": 1001}, headers=auth(key))
    assert bad.status_code == 422, bad.text


def test_the_simulator_refuses_keys_over_255_characters_uncounted(sim: httpx.Client) -> None:
    """docs/providers.md, simulator API: a key over 255 characters gets 400 before anything else, not counted."""
    body = {"amount_minor": 1500, "currency": "EUR", "reference": "order-1"}
    long = sim.post("/v1/payments/authorize", json=body, headers={"Idempotency-Key": "k" * 256})
    assert long.status_code == 400, long.text
    assert sim.get("/_stats").json().get("authorize", 0) == 0
    ok = sim.post("/v1/payments/authorize", json=body, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 201, ok.text
    assert sim.get("/_stats").json()["authorize"] == 1


async def test_a_paying_hold_is_kept_120_s_and_its_lock_lasts_8_s_then_a_retry_hears_busy(client, app, database_url,
                                                                                             settings, sim):
    """docs/checkout.md, steps and idempotency: the hold's expiry moves to cover the 120 s payment window, the
    attempt's lock lasts 8 s; a retry meeting a running attempt waits up to 3 s, then `503 busy`,
    `Retry-After: 2`."""
    import redis.asyncio as aioredis

    from gateway.sale.checkout import checkout_keys
    from gateway.sale.holds import event_of_hold
    from gateway.store.keys import event_key

    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}, ttl=5))
    me = await buyer(client)
    resp = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
    assert resp.status_code == 201, resp.text
    hold_id = resp.json()["hold_id"]
    buyer_id = app.gateway.signer.verify(me["Authorization"].split()[1], "b")["sub"]
    lock = checkout_keys(settings.redis_prefix, event_of_hold(hold_id), f"{buyer_id}|claims-lock-1")[-2]
    redis = aioredis.Redis.from_url(settings.redis_url)
    sim.put("/_config", json={"latency_ms": 1500}).raise_for_status()
    try:
        paying = asyncio.create_task(client.post(f"/v1/holds/{hold_id}/checkout", json={"email": "fan@example.org"},
                                                 headers={**me, "Idempotency-Key": "claims-lock-1"}))
        await asyncio.sleep(0.6)  # the attempt is at the provider
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        expiry = await redis.zscore(event_key(settings.redis_prefix, event["id"], "holds"), hold_id)
        assert 118_000 <= expiry - now_ms <= 120_000, expiry - now_ms
        left = await redis.pttl(lock)
        assert 6_000 < left <= 8_000, left
        done = await paying
        assert done.status_code == 201, done.text
        # a lock whose attempt died: the retry waits about 3 s, then hears busy
        sim.put("/_config", json={"latency_ms": 0}).raise_for_status()
        other = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)).json()
        dead = checkout_keys(settings.redis_prefix, event_of_hold(other["hold_id"]), f"{buyer_id}|claims-lock-2")[-2]
        await redis.set(dead, "an-attempt-that-died", px=8_000)
        t0 = time.monotonic()
        busy = await client.post(f"/v1/holds/{other['hold_id']}/checkout", json={"email": "fan@example.org"},
                                 headers={**me, "Idempotency-Key": "claims-lock-2"})
        waited = time.monotonic() - t0
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy", busy.text
        assert busy.headers["Retry-After"] == "2"
        assert 2.5 <= waited <= 4.5, waited
    finally:
        await redis.aclose()


async def test_queue_and_admission_tokens_carry_what_the_docs_say(qclient, database_url, settings):
    """docs/waiting-room.md, "Tokens": a queue token is `{ev, n, sub, exp}` living `queue_token_ttl_s` (6 h); an
    admission token is `{sub, ev, r, exp}`; the kind is part of the token."""
    assert settings.queue_token_ttl_s == 6 * 3600
    event = await queue_event(qclient, database_url, rate=50, ga={"floor": 10})
    me = await new_buyer(qclient)
    before = time.time()
    joined = await join(qclient, event["id"], me)
    queue_token = joined["queue_token"]
    assert queue_token.startswith("q.")
    claims = _payload(queue_token)
    assert set(claims) == {"ev", "n", "sub", "exp"}
    assert claims["ev"] == event["id"] and claims["sub"] == me["buyer_id"]
    assert before + 6 * 3600 - 2 <= claims["exp"] <= time.time() + 6 * 3600 + 2
    async with leader(settings):
        async def admitted():
            body = await poll(qclient, event["id"], queue_token)
            return body if body["status"] == "admitted" else None

        body = await wait_for(admitted)
    assert body, "not admitted"
    assert body["admission_token"].startswith("a.")
    claims = _payload(body["admission_token"])
    assert set(claims) == {"sub", "ev", "r", "exp"}
    assert (claims["sub"], claims["ev"], claims["r"]) == (me["buyer_id"], event["id"], body["place"])
    # a queue token is no buyer token: the kind is under the MAC
    resp = await qclient.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}},
                              headers={**auth(queue_token), "X-Admission-Token": body["admission_token"]})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_token", resp.text


async def test_an_address_over_its_cap_hears_limit_held_requested_and_the_hold_time(settings, database_url):
    """docs/waiting-room.md, "Tickets held at once per address per event": `429 address_limit_exceeded`
    `{limit, held, requested, retry_after_s}` with `Retry-After` set to the event's hold time."""
    from tests.gateway.test_sybil import DEFAULTS, PROXY, buyer_at, ga_event, gateway

    factor = DEFAULTS["holds_per_address_factor"]
    assert factor == 4
    async with gateway(settings, **PROXY) as client:
        event = await ga_event(client, database_url, limit=2, ttl=300)
        holds = f"/v1/events/{event['id']}/holds"
        for _ in range(4):
            who = await buyer_at(client, "203.0.113.61")
            assert (await client.post(holds, json={"ga": {"floor": 2}}, headers=who)).status_code == 201
        who = await buyer_at(client, "203.0.113.61")
        resp = await client.post(holds, json={"ga": {"floor": 2}}, headers=who)
        assert resp.status_code == 429, resp.text
        error = resp.json()["error"]
        assert error["code"] == "address_limit_exceeded"
        assert error["details"] == {"limit": 8, "held": 8, "requested": 2, "retry_after_s": 300}
        assert resp.headers["Retry-After"] == "300"


async def test_a_proof_of_work_nonce_is_at_most_64_characters(settings, database_url):
    """docs/waiting-room.md, "Proof of work on joining": a nonce of at most 64 characters; a longer one is
    refused as `malformed` and joins nothing, however good its hash."""
    from gateway.waiting_room.pow import leading_zero_bits
    from tests.gateway.test_sybil import challenge_of, gateway, queue_joined
    from tests.gateway.test_sybil import join as pow_join

    bits = 4

    def solved(challenge, width):
        for n in range(10**6):
            nonce = str(n).rjust(width, "0")
            if leading_zero_bits(hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()) >= bits:
                return f"{challenge}:{nonce}"
        raise AssertionError("no nonce")

    async with gateway(settings, queue_pow=True, queue_pow_bits=bits) as client:
        event = await queue_event(client, database_url)
        me = (await client.post("/v1/buyer-token")).json()["buyer_token"]
        challenge = challenge_of(await pow_join(client, event["id"], me), "missing")["challenge"]
        challenge_of(await pow_join(client, event["id"], me, solved(challenge, 65)), "malformed")
        assert await queue_joined(client, event) == 0
        resp = await pow_join(client, event["id"], me, solved(challenge, 64))
        assert resp.status_code == 201, resp.text


def test_the_documented_waiting_room_defaults() -> None:
    """docs/waiting-room.md names these defaults (abuse limits, Sybil protections, metering, waiting list); an
    operator sizing a sale relies on them. The environment is ignored: these are the code's own defaults."""
    import pydantic

    from gateway.core.config import Settings

    documented = {
        "queue_admission_ttl_s": 900, "queue_stall_s": 60, "queue_cache_s": 0.25, "queue_seen_flush_s": 1,
        "queue_token_ttl_s": 6 * 3600, "queue_lease_ms": 2000, "queue_tick_s": 0.1,
        "queue_max_active_holds": 5000, "queue_max_checkout_ms": 3000, "queue_checkout_target_ms": 400,
        "queue_tickets_per_buyer": 2.0, "queue_tickets_prior_n": 20, "queue_expiring_window_s": 60,
        "queue_poll_per_ip_per_s": 200, "queue_poll_per_token_per_s": 2, "queue_join_per_ip_per_s": 10,
        "queue_join_per_ip_per_min": 120, "queue_join_per_buyer_per_min": 10,
        "buyer_token_per_ip_per_s": 0.5, "buyer_token_per_ip_burst": 20, "buyer_token_per_prefix_per_s": 10,
        "buyer_token_per_prefix_burst": 300, "ipv4_prefix_bits": 24, "ipv6_address_bits": 64,
        "ipv6_prefix_bits": 48, "holds_per_address_factor": 4, "queue_pow": False, "queue_pow_bits": 16,
        "queue_pow_ttl_s": 3600, "waitlist_offer_ttl_s": 600, "max_seats_per_hold": 50,
    }
    actual = {name: Settings.model_fields[name].default for name in documented}
    assert actual == documented
    # the offer lifetime takes 1..86,400 s
    base = {"secret_key": "test-" + "x" * 40}
    for ok in (1, 86_400):
        assert Settings(**base, waitlist_offer_ttl_s=ok).waitlist_offer_ttl_s == ok
    for bad in (0, 86_401):
        with pytest.raises(pydantic.ValidationError):
            Settings(**base, waitlist_offer_ttl_s=bad)


async def test_a_paused_event_keeps_its_waiting_room_and_admits_nobody(qclient, database_url, settings):
    """docs/waiting-room.md, "Decisions": a paused event keeps its waiting room: joins continue, admission stops
    (`paused: event_paused`), and goes on when the sale reopens."""
    event = await queue_event(qclient, database_url, rate=50, ga={"floor": 10})
    h = auth(event["api_key"])
    async with leader(settings):
        first = await join(qclient, event["id"], await new_buyer(qclient), expect=201)

        async def admitted_first():
            body = await poll(qclient, event["id"], first["queue_token"])
            return body if body["status"] == "admitted" else None

        assert await wait_for(admitted_first), "the sale's first buyer was not admitted"
        assert (await qclient.post(f"/v1/events/{event['id']}/pause", headers=h)).status_code == 200
        buyers = [await new_buyer(qclient) for _ in range(2)]
        joined = [await join(qclient, event["id"], b, expect=201) for b in buyers]
        assert [j["status"] for j in joined] == ["waiting", "waiting"]
        assert [j["place"] for j in joined] == [2, 3]

        async def told_paused():
            bodies = [await poll(qclient, event["id"], j["queue_token"]) for j in joined]
            return bodies if all(b.get("paused") == "event_paused" for b in bodies) else None

        bodies = await wait_for(told_paused, timeout=5)
        assert bodies, "never told event_paused"
        await asyncio.sleep(1.0)  # the leader keeps ticking: nobody is admitted while paused
        bodies = [await poll(qclient, event["id"], j["queue_token"]) for j in joined]
        assert [b["status"] for b in bodies] == ["waiting", "waiting"]
        assert all(b["paused"] == "event_paused" and b["eta_s"] is None for b in bodies)
        assert (await qclient.post(f"/v1/events/{event['id']}/open", headers=h)).status_code == 200

        async def admitted():
            got = [await poll(qclient, event["id"], j["queue_token"]) for j in joined]
            return got if all(b["status"] == "admitted" for b in got) else None

        assert await wait_for(admitted, timeout=10), "not admitted after the sale reopened"


async def test_the_organiser_stats_carry_every_documented_figure(qclient, database_url):
    """docs/waiting-room.md, API: `GET /v1/events/{id}/stats` → `queue {joined, length, ..., leader}` with the
    nested figures the docs list (more may be present)."""
    event = await queue_event(qclient, database_url, rate=10, ga={"floor": 10})
    await join(qclient, event["id"], await new_buyer(qclient))
    resp = await qclient.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["event_id"] == event["id"]
    queue = body["queue"]
    assert set(queue) >= {"joined", "length", "admitted_up_to", "admitted", "lost_stalled", "rate", "eta_last_s",
                          "paused", "sold_out", "backpressure", "inventory", "demand", "prequeue", "waitlist",
                          "leader"}
    assert set(queue["rate"]) >= {"configured_per_s", "effective_per_s", "measured_per_s", "places_per_s"}
    assert set(queue["inventory"]) >= {"free", "held", "expiring"}
    assert set(queue["demand"]) >= {"tickets_per_buyer", "acted_buyers", "tickets_taken", "pending_buyers",
                                    "reaction_s", "pending_window_s", "holds_returned", "budget"}
    assert set(queue["prequeue"]) >= {"size", "commitment"}
    assert set(queue["waitlist"]) >= {"joined", "length", "open_offers", "offers", "offered_tickets", "accepted",
                                      "accepted_tickets", "lapsed", "declined"}
    assert set(queue["backpressure"]) >= {"sales_per_s", "checkout_cap_per_s"}
    assert queue["joined"] == 1 and queue["rate"]["configured_per_s"] == 10


def test_the_documented_provider_and_notification_defaults() -> None:
    """docs/providers.md, the settings tables of `FLASHGATE_PAYMENTS_*` and `FLASHGATE_NOTIFY_*`: the defaults
    an operator reads there are the code's."""
    from gateway.core.config import NotifySettings, ProviderSettings

    payments = {"url": "http://127.0.0.1:8099", "timeout_s": 2.0, "connect_timeout_s": 0.5, "max_concurrency": 64,
                "acquire_timeout_s": 0.05, "breaker_fail_max": 5, "breaker_reset_s": 10, "retry_attempts": 3,
                "retry_initial_s": 0.05, "retry_max_s": 0.5, "limit_initial": 16, "limit_min": 2, "limit_max": 64,
                "limit_tolerance": 2.0, "limit_smoothing": 0.2, "limit_throttle_backoff": 0.5,
                "limit_baseline_window_s": 30, "limit_rtt_floor_s": 0.02, "queue_max": 512,
                "queue_margin_rtts": 1.5, "capture_on_authorize": True}
    assert {n: ProviderSettings.model_fields[n].default for n in payments} == payments
    notify = {"smtp_host": "127.0.0.1", "smtp_port": 1025, "smtp_starttls": False, "smtp_timeout_s": 5,
              "smtp_max_concurrency": 8, "webhook_timeout_s": 5, "webhook_max_concurrency": 8,
              "webhook_allow_networks": "", "acquire_timeout_s": 10, "max_attempts": 5, "backoff_base_s": 2,
              "backoff_max_s": 900, "breaker_fail_max": 5, "breaker_reset_s": 30, "batch": 32, "block_ms": 500,
              "claim_idle_s": 60, "claim_every_s": 5}
    assert {n: NotifySettings.model_fields[n].default for n in notify} == notify


async def _sell(client, event, count, *, drain=None):
    """`count` one-ticket orders of separate buyers, in sale order; `drain` is called after each sale."""
    made = []
    for i in range(count):
        me = await buyer(client)
        held = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
        assert held.status_code == 201, held.text
        paid = await client.post(f"/v1/holds/{held.json()['hold_id']}/checkout", json={"email": "fan@example.org"},
                                 headers={**me, "Idempotency-Key": f"claims-list-{i}"})
        assert paid.status_code == 201, paid.text
        made.append(paid.json()["order_id"])
        await asyncio.sleep(0.02)  # distinct sale times
        if drain:
            await drain()
    return made


def _ledger(app):
    from gateway.workers.ledger import LedgerWorker

    worker = LedgerWorker(app.gateway.runtime, consumer="claims")

    async def drain():
        while await worker.step():
            pass

    return drain


async def test_the_order_list_is_newest_first_and_pages_with_offset(client, app, database_url, sim):
    """docs/checkout.md, "Orders, refunds": `GET /v1/events/{id}/orders` lists orders newest first, `?limit=`,
    `?offset=`, with `read_from {"source": "primary"}` when no replica is set. Here each sale reaches
    Postgres in its own ledger batch."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 10}))
    made = await _sell(client, event, 3, drain=_ledger(app))
    url = f"/v1/events/{event['id']}/orders"
    listed = (await client.get(url, headers=auth(key))).json()
    assert [o["order_id"] for o in listed["orders"]] == made[::-1]
    assert listed["read_from"] == {"source": "primary"}
    page = (await client.get(url, params={"limit": 1, "offset": 1}, headers=auth(key))).json()
    assert [o["order_id"] for o in page["orders"]] == [made[1]]


async def test_orders_written_in_one_ledger_batch_are_listed_newest_first(client, app, database_url, sim):
    """docs/checkout.md, "Orders, refunds": newest first, also when the ledger writes several sales in one
    transaction (up to 1,000 entries per batch: the normal case during a sale)."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 10}))
    made = await _sell(client, event, 8)
    await _ledger(app)()
    listed = (await client.get(f"/v1/events/{event['id']}/orders", headers=auth(key))).json()
    assert [o["order_id"] for o in listed["orders"]] == made[::-1]
