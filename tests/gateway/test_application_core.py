"""The application core: readiness, the Redis budget, outages of either store, the pool, locks,
sealed keys and the OpenAPI document. Each test names the user-visible behaviour it guards."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.api.app import create_app, create_fastapi
from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.core.sealing import event_context
from gateway.orders import ticketcodes
from gateway.organisers.event_spec import EventSpec
from gateway.organisers.events import EventAdmin, create_event
from gateway.organisers.orgs import create_organisation
from gateway.sale.checkout import attempt_lock, let_go
from gateway.stack.embedded import RedisServer, free_port
from gateway.store.keys import event_key
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


def dead_postgres_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://gateway.test")


async def test_ready_while_postgres_is_down_but_not_while_redis_is(settings: Settings, payment_simulator):
    """A load balancer keeps gateways in service while Postgres is down (sales go on), not while Redis is."""
    no_pg = create_app(settings.model_copy(update={"database_url": dead_postgres_url()}))
    async with no_pg.fastapi.router.lifespan_context(no_pg.fastapi), client_for(no_pg) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "degraded" and "postgres" in body["degraded"]
    assert body["checks"]["redis"]["ok"] is True and body["checks"]["postgres"]["ok"] is False

    no_redis = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    async with no_redis.fastapi.router.lifespan_context(no_redis.fastapi), client_for(no_redis) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 503 and resp.json()["checks"]["redis"]["ok"] is False


async def test_order_view_comes_from_redis_while_postgres_is_down(client, database_url, settings, sim):
    """A buyer sees their tickets during a Postgres outage (the sale is final in Redis first)."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 2}}, headers=me)).json()
    order = (await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                               headers={**me, "Idempotency-Key": "order-view-1"})).json()
    assert order.get("status") == "paid", order

    no_pg = create_app(settings.model_copy(update={"database_url": dead_postgres_url()}))
    async with no_pg.fastapi.router.lifespan_context(no_pg.fastapi), client_for(no_pg) as c:
        resp = await c.get(f"/v1/orders/{order['order_id']}", headers=auth(order["order_token"]))
        page = await c.get(order["order_page_url"])
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["status"] == "paid" and len(got["tickets"]) == 2
    assert [t["code"] for t in got["tickets"]] == [t["code"] for t in order["tickets"]]
    assert page.status_code == 200 and page.text.count("<svg") == 2, page.text[:300]
    assert order["tickets"][0]["code"] in page.text


async def test_order_page_escapes_what_it_shows(client, database_url, sim):
    """The order page is a template with autoescaping: an order id in the URL cannot inject markup."""
    resp = await client.get("/orders/<script>alert(1)", params={"token": "o.x.y"})
    assert resp.status_code == 401 and "<script>" not in resp.text


async def test_many_status_changes_at_once_do_not_exhaust_a_small_pool(settings: Settings, database_url):
    """Opening events holds one pooled connection per call, never two: 8 opens at once on a pool of 2
    all finish (before, each held a connection while waiting for a second one: a deadlock)."""
    small = settings.model_copy(update={"pg_pool_size": 2, "redis_prefix": settings.redis_prefix + ":pool"})
    runtime = Runtime.from_settings(small)
    try:
        conn = await asyncpg.connect(database_url)
        try:
            org = await create_organisation(conn, name="Pool org")
        finally:
            await conn.close()
        pool = await runtime.pg()
        spec = EventSpec.model_validate(seat_spec(sections=1, rows=1, seats=4))
        ids = [(await create_event(pool, organisation_id=org.id, spec=spec))["id"] for _ in range(8)]
        admin = EventAdmin(runtime)
        views = await asyncio.wait_for(
            asyncio.gather(*(admin.change_status(org.id, event_id, "open") for event_id in ids)), 30)
        assert {v["status"] for v in views} == {"on_sale"}
    finally:
        await runtime.close()


async def test_a_lock_is_released_only_by_its_owner(settings: Settings):
    """A checkout attempt whose lock expired (and was taken by a retry) must not delete the retry's lock."""
    runtime = Runtime.from_settings(settings)
    try:
        redis = runtime.redis
        first = attempt_lock(redis, settings.redis_prefix, 1, "buyer|key-lock-1")
        assert await first.acquire()
        await redis.delete(first.name)  # its time ran out
        second = attempt_lock(redis, settings.redis_prefix, 1, "buyer|key-lock-1")
        assert await second.acquire()
        await let_go(first)  # the first attempt finishes late
        assert await redis.get(second.name) is not None, "the late owner deleted someone else's lock"
        third = attempt_lock(redis, settings.redis_prefix, 1, "buyer|key-lock-1")
        assert not await third.acquire()
        await let_go(second)
        assert await redis.get(second.name) is None
    finally:
        await runtime.close()


async def test_signing_keys_are_sealed_in_redis(client, app, database_url, settings, redis_sync, sim):
    """A Redis dump does not contain an event's ticket-signing key; tickets still verify."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    conn = await asyncpg.connect(database_url)
    try:
        private, public = await conn.fetchrow("SELECT signing_private_key, signing_public_key FROM events "
                                              "WHERE id = $1", event["id"])
    finally:
        await conn.close()
    stored = redis_sync.hget(event_key(settings.redis_prefix, event["id"], "info"), "signing_private")
    assert stored and bytes(private) not in stored and len(stored) > len(private)
    assert app.gateway.runtime.sealer.unseal(stored, context=event_context(event["id"])) == bytes(private)
    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)).json()
    order = (await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                               headers={**me, "Idempotency-Key": "sealed-key-1"})).json()
    assert order.get("status") == "paid", order
    code = order["tickets"][0]["code"]
    assert ticketcodes.verify(code, {1: bytes(public)}).event_id == event["id"]


@pytest.fixture
def stallable_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def test_a_stalled_redis_answers_503_fast_and_recovers(stallable_redis, settings, database_url, sim):
    """Redis stops answering (SIGSTOP): holds and checkouts answer 503 with Retry-After within the
    budget, never hang; availability is served from the snapshot; after SIGCONT holds work again."""
    local = settings.model_copy(update={"redis_url": stallable_redis.url, "redis_timeout_s": 0.5,
                                        "redis_prefix": "stall"})
    app = create_app(local)
    async with app.fastapi.router.lifespan_context(app.fastapi), client_for(app) as c:
        _, key = await new_org(database_url)
        event = await open_event(c, key, seat_spec(ga={"floor": 50}))
        me = await buyer(c)
        ok = await c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
        assert ok.status_code == 201, ok.text
        os.kill(stallable_redis.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=me)
                  for _ in range(20)),
                c.post(f"/v1/holds/{ok.json()['hold_id']}/checkout", json={},
                       headers={**me, "Idempotency-Key": "stalled-1"}),
                c.get(f"/v1/events/{event['id']}/public"))
            elapsed = time.monotonic() - started
            avail = await c.get(f"/v1/events/{event['id']}/availability")
        finally:
            os.kill(stallable_redis.proc.pid, signal.SIGCONT)
        assert elapsed < 5, f"requests hung for {elapsed:.1f} s"
        for resp in answers:
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "unavailable" and resp.headers.get("retry-after")
        assert avail.status_code == 200  # the snapshot answers (marked stale once old)
        # (Holds sent before the stall may still be executed by Redis when it resumes: the buyer was told
        # 503, and those holds expire with the event's hold time. A new buyer is not affected.)
        other = await buyer(c)
        deadline = time.monotonic() + 10
        while True:
            again = await c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=other)
            if again.status_code == 201 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert again.status_code == 201, again.text


async def test_a_spike_waits_for_a_pooled_connection_instead_of_failing(settings: Settings, client, database_url,
                                                                         sim):
    """More concurrent requests than pooled Redis connections: they queue (within the budget), none 500s."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    tight = create_app(settings.model_copy(update={"redis_max_connections": 2}))
    async with tight.fastapi.router.lifespan_context(tight.fastapi), client_for(tight) as c:
        answers = await asyncio.gather(*(c.get(f"/v1/events/{event['id']}/public") for _ in range(60)))
    assert [r.status_code for r in answers] == [200] * 60


async def test_openapi_describes_the_whole_buyer_api(client):
    """`/docs` shows the hot routes too (answered by the edge, described through FastAPI)."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method in [("/v1/events/{event_id}/availability", "get"), ("/v1/events/{event_id}/queue", "post"),
                         ("/v1/events/{event_id}/queue", "get"), ("/v1/events/{event_id}/holds", "post"),
                         ("/v1/holds/{hold_id}", "delete"), ("/v1/holds/{hold_id}/checkout", "post"),
                         ("/v1/buyer-token", "post"), ("/v1/events/{event_id}/public", "get")]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the OpenAPI document"


async def test_framework_routes_answer_like_the_edge(app, client, database_url, sim):
    """Without the edge in front, the FastAPI routes serve the same buyer API with the same answers."""
    _, key = await new_org(database_url)
    event = await open_event(client, key, seat_spec(ga={"floor": 5}))
    me = await buyer(client)
    bare = create_fastapi(app.gateway)  # same services, no edge
    async with client_for(bare) as c:
        hold = await c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 2}}, headers=me)
        bad = await c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 2}, "seats": []}, headers=me)
        deadline = time.monotonic() + 5
        while True:  # the snapshot follows Redis within a refresh
            avail = await c.get(f"/v1/events/{event['id']}/availability", params={"seats": 0})
            if avail.json()["ga"][0]["held"] == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        order = await c.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                             headers={**me, "Idempotency-Key": "bare-fastapi-1"})
        nokey = await c.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={}, headers=me)
        bare_token = await c.post("/v1/buyer-token")
    edge_token = await client.post("/v1/buyer-token")
    for minted in (bare_token, edge_token):
        assert minted.status_code == 201 and set(minted.json()) == {"buyer_id", "buyer_token", "expires_at"}
        assert app.gateway.signer.verify(minted.json()["buyer_token"], "b")["sub"] == minted.json()["buyer_id"]
    assert hold.status_code == 201 and hold.json()["ga"] == {"floor": 2}
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert avail.status_code == 200 and avail.json()["ga"][0]["held"] == 2
    assert order.status_code == 201 and order.json()["status"] == "paid"
    assert nokey.status_code == 422
