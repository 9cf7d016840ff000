"""Organiser webhooks for sales (signed, retried), and the organiser's dead-letter list and replay."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import orjson
import pytest

from gateway.orders import notify
from gateway.stack.embedded import free_port
from gateway.workers.notify_worker import run as notify_run
from tests.utils.factories import auth, buyer, new_org, seat_spec
from tests.utils.webhooks import WebhookReceiver

pytestmark = pytest.mark.anyio
SECRET = "whsec-0123456789abcdef"


@pytest.fixture
def settings(settings):
    """The receivers here listen on this machine: loopback is let through by the development allow-list."""
    return settings.model_copy(update={"notify": settings.notify.model_copy(
        update={"webhook_allow_networks": "127.0.0.0/8"})})


@asynccontextmanager
async def notify_worker(runtime, **overrides):
    settings = notify.NotifySettings(**{"smtp_port": free_port(), "max_attempts": 3, "backoff_base_s": 0.05,
                                        "webhook_allow_networks": "127.0.0.0/8",
                                        "backoff_max_s": 0.2, "block_ms": 50, "claim_every_s": 0.1,
                                        "webhook_timeout_s": 2.0, **overrides})
    stop = asyncio.Event()
    task = asyncio.create_task(notify_run(runtime, stop, settings=settings))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def sell_one(client, key, url):
    spec = {**seat_spec(ga={"floor": 10}), "webhook": {"url": url, "secret": SECRET}}
    event = (await client.post("/v1/events", json=spec, headers=auth(key))).json()
    assert event["webhook"] == {"url": url}, "the secret is never shown back"
    await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
    me = await buyer(client)
    hold = (await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 2}}, headers=me)).json()
    resp = await client.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                             headers={**me, "Idempotency-Key": f"wh-{hold['hold_id']}"})
    assert resp.status_code == 201, resp.text
    return event, resp.json()


async def test_sales_reach_the_organiser_webhook_signed(app, client, database_url, sim):
    _, key = await new_org(database_url)
    runtime = app.gateway.runtime
    with WebhookReceiver() as hooks:
        async with notify_worker(runtime):
            event, order = await sell_one(client, key, hooks.url)
            await eventually(lambda: len(hooks.requests) >= 1)
            headers, body = hooks.requests[0]
            assert notify.verify_webhook(SECRET, headers["x-flashgate-signature"], body)
            sent = orjson.loads(body)
            assert sent["type"] == "order.paid"
            assert sent["data"]["order_id"] == order["order_id"] and len(sent["data"]["tickets"]) == 2
            # The ledger must have written the order before an organiser can refund it.
            from gateway.workers.ledger import LedgerWorker
            worker = LedgerWorker(runtime, consumer="wh")
            while await worker.step():
                pass
            refund = await client.post(f"/v1/orders/{order['order_id']}/refund", headers=auth(key))
            assert refund.status_code == 200, refund.text
            await eventually(lambda: len(hooks.requests) >= 2)
            refunded = orjson.loads(hooks.requests[1][1])
            assert refunded["type"] == "order.refunded" and refunded["data"]["order_id"] == order["order_id"]


async def test_dead_letters_are_listed_and_replayed_per_organisation(app, client, database_url, sim):
    org_id, key = await new_org(database_url)
    _, other_key = await new_org(database_url)
    runtime = app.gateway.runtime
    closed = f"http://127.0.0.1:{free_port()}/hooks"
    async with notify_worker(runtime, max_attempts=1):
        await sell_one(client, key, closed)

        async def dead():
            return (await client.get("/v1/notifications/dead", headers=auth(key))).json()["dead"]

        for _ in range(200):
            if await dead():
                break
            await asyncio.sleep(0.05)
    letters = await dead()
    assert len(letters) == 1 and SECRET not in orjson.dumps(letters).decode()
    assert (await client.get("/v1/notifications/dead", headers=auth(other_key))).json() == {"dead": []}
    assert (await client.post("/v1/notifications/dead/replay", headers=auth(other_key))).json() == {"replayed": 0}
    replayed = await client.post("/v1/notifications/dead/replay", json={}, headers=auth(key))
    assert replayed.json() == {"replayed": 1}
    assert await dead() == []
    bad = await client.get("/v1/notifications/dead?limit=0", headers=auth(key))
    assert bad.status_code == 422


async def test_redis_never_holds_a_webhook_secret_in_clear(app, client, database_url, sim, redis_sync):
    """After a sale queued its webhook (and before any worker sent it), no Redis key holds the organiser's
    webhook secret: the event's info and the notification stream carry it sealed, and the worker still
    signs with it. A Redis dump, replica or backup cannot sign webhooks in the organiser's name."""
    _, key = await new_org(database_url)
    runtime = app.gateway.runtime
    with WebhookReceiver() as hooks:
        await sell_one(client, key, hooks.url)
        prefix = runtime.prefix.encode()
        leaks = []
        for name in redis_sync.scan_iter(match=prefix + b"*", count=1000):
            kind = redis_sync.type(name)
            if kind == b"hash":
                values = list(redis_sync.hgetall(name).values())
            elif kind == b"stream":
                values = [v for _, fields in redis_sync.xrange(name) for v in fields.values()]
            elif kind == b"string":
                values = [redis_sync.get(name) or b""]
            else:
                continue
            leaks += [name for v in values if SECRET.encode() in v]
        assert not leaks, leaks
        async with notify_worker(runtime):
            await eventually(lambda: len(hooks.requests) >= 1)
        headers, body = hooks.requests[0]
        assert notify.verify_webhook(SECRET, headers["x-flashgate-signature"], body)
