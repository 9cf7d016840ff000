"""The ledger worker's cost follows the events with entries to write, not every event that ever sold.

Each test runs on a private redis-server (the session Redis may be shared by parallel tests), so
`INFO commandstats` counts the worker's commands and nothing else. The worker runs as a real
process (`flashgate worker ledger`: two consumers), as in tests/gateway/test_ledger_resilience.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.config import Settings
from gateway.stack.embedded import MissingBinary, RedisServer
from gateway.store.keys import LEDGER_GROUP, event_key, ledger_dirty_set, ledger_set
from gateway.workers.ledger import LedgerWorker, write_batch
from tests.conftest import need
from tests.gateway.test_ledger_resilience import sell
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FINISHED_BASE = 5_000_000  # ids of the synthetic finished events (only in the private Redis)
IDLE_WINDOW_S = 4.0
MAX_IDLE_RATE = 150.0      # Redis commands per second, whole worker process, idle


@contextlib.contextmanager
def private_redis(tmp_root) -> Iterator[str]:
    try:
        server = RedisServer(tmp_root / f"redis-ledger-{secrets.token_hex(3)}").start()
    except MissingBinary as exc:
        need(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


async def eventually(check, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)


async def seed_finished(redis: aioredis.Redis, prefix: str, n: int) -> list[int]:
    """n closed events whose ledger entries were all delivered and acknowledged long ago. They are
    still in the registry and (as right after their sale) in the polled set: the worker must prune them."""
    ids = [FINISHED_BASE + i for i in range(n)]
    for start in range(0, n, 250):
        chunk = ids[start:start + 250]
        pipe = redis.pipeline(transaction=False)
        for eid in chunk:
            stream = event_key(prefix, eid, "ledger")
            pipe.xgroup_create(stream, LEDGER_GROUP, id="0", mkstream=True)
            for j in range(2):
                pipe.xadd(stream, {"k": "order", "d": orjson.dumps({"order_id": str(uuid.uuid4()), "n": j}),
                                   "o": b"{}"})
        await pipe.execute()
        pipe = redis.pipeline(transaction=False)
        for eid in chunk:
            pipe.xreadgroup(LEDGER_GROUP, "long-gone", {event_key(prefix, eid, "ledger"): ">"}, count=10)
        reads = await pipe.execute()
        pipe = redis.pipeline(transaction=False)
        for eid, read in zip(chunk, reads):
            stream = event_key(prefix, eid, "ledger")
            pipe.xack(stream, LEDGER_GROUP, *[entry_id for entry_id, _ in read[0][1]])
            pipe.hset(event_key(prefix, eid, "meta"), mapping={"status": "closed"})
        pipe.sadd(ledger_set(prefix), *chunk)
        pipe.sadd(ledger_dirty_set(prefix), *chunk)
        await pipe.execute()
    return ids


async def dirty_members(redis: aioredis.Redis, prefix: str) -> set[int]:
    return {int(x) for x in await redis.smembers(ledger_dirty_set(prefix))}


async def command_rate(redis: aioredis.Redis, seconds: float) -> tuple[float, dict[str, int]]:
    """Commands per second the server executed for others over `seconds` (ours excluded)."""
    await redis.config_resetstat()
    await asyncio.sleep(seconds)
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
             if not name.startswith(("cmdstat_info", "cmdstat_config"))}
    return sum(calls.values()) / seconds, calls


async def create_live_event(settings: Settings, database_url: str, ga: int = 500) -> tuple[int, str]:
    from gateway.api.app import create_app
    import httpx

    app = create_app(settings)
    async with app.fastapi.router.lifespan_context(app.fastapi):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            _, key = await new_org(database_url)
            event = (await client.post("/v1/events", json=seat_spec(ga={"floor": ga}), headers=auth(key))).json()
            resp = await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))
            assert resp.status_code == 200, resp.text
    return event["id"], key


async def idle_rate(settings: Settings, database_url: str, tmp_root, n_finished: int) -> dict:
    with private_redis(tmp_root) as url:
        local = settings.model_copy(update={"redis_url": url, "redis_prefix": f"lwc{n_finished}"})
        live, _ = await create_live_event(local, database_url)
        redis = aioredis.Redis.from_url(url)
        try:
            await seed_finished(redis, local.redis_prefix, n_finished)
            with start_worker(local, "ledger", tmp_root) as proc:
                pruned = await eventually(lambda: _only(redis, local.redis_prefix, {live}), timeout=10)
                await asyncio.sleep(1.0)  # the idle poll interval settles
                rate, calls = await command_rate(redis, IDLE_WINDOW_S)
                assert proc.poll() is None, "the ledger worker died"
            return {"rate": rate, "calls": calls, "pruned": pruned,
                    "dirty": await dirty_members(redis, local.redis_prefix), "live": live}
        finally:
            await redis.aclose()


async def _only(redis: aioredis.Redis, prefix: str, expected: set[int]) -> bool:
    return await dirty_members(redis, prefix) == expected


async def test_idle_cost_does_not_grow_with_finished_events(settings, database_url, payment_simulator, tmp_root,
                                                           monkeypatch):
    monkeypatch.setenv("FLASHGATE_LEDGER_ROUND_S", "1")  # a few housekeeping rounds inside the window
    few = await idle_rate(settings, database_url, tmp_root, 10)
    many = await idle_rate(settings, database_url, tmp_root, 1000)
    report = (f"idle Redis commands/s: 10 finished events {few['rate']:.1f} {few['calls']}; "
              f"1,000 finished events {many['rate']:.1f} {many['calls']}")
    print(report)
    assert many["rate"] < 2 * max(few["rate"], 1.0), report
    assert few["rate"] < MAX_IDLE_RATE and many["rate"] < MAX_IDLE_RATE, report
    # Finished, drained events left the polled set; the live one stays.
    assert few["dirty"] == {few["live"]} and many["dirty"] == {many["live"]}, report


async def test_sales_after_idle_and_after_a_restart_are_written(settings, database_url, payment_simulator, tmp_root,
                                                                monkeypatch):
    import httpx

    from gateway.api.app import create_app
    from gateway.providers.payments import SimulatorProvider

    monkeypatch.setenv("FLASHGATE_LEDGER_ROUND_S", "1")
    monkeypatch.setenv("FLASHGATE_LEDGER_CLAIM_IDLE_MS", "500")
    monkeypatch.setattr(SimulatorProvider, "name", "acme-pay")  # the provider name travels in the entries
    with private_redis(tmp_root) as url:
        local = settings.model_copy(update={"redis_url": url, "redis_prefix": "lwcsale",
                                            "payments": settings.payments.model_copy(update={"url": payment_simulator})})
        prefix = local.redis_prefix
        app = create_app(local)
        async with app.fastapi.router.lifespan_context(app.fastapi):
            runtime = app.gateway.runtime
            redis, pool = runtime.redis, await runtime.pg()
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                _, key = await new_org(database_url)
                event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 500}),
                                           headers=auth(key))).json()
                eid = event["id"]
                assert (await client.post(f"/v1/events/{eid}/open", headers=auth(key))).status_code == 200
                await seed_finished(redis, prefix, 10)
                stream = event_key(prefix, eid, "ledger")

                async def orders() -> int:
                    return await pool.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", eid)

                with start_worker(local, "ledger", tmp_root) as first:
                    assert await eventually(lambda: _only(redis, prefix, {eid}), timeout=10)
                    await asyncio.sleep(1.5)  # idle: the worker polls at its slowest
                    sold = await sell(client, eid, 20)
                    t0 = time.monotonic()
                    assert await eventually(lambda: _count_is(orders, 20), timeout=5), await orders()
                    print(f"20 sales after idle written in {time.monotonic() - t0:.2f} s")
                    os.kill(first.pid, signal.SIGKILL)
                    first.wait(10)
                sold += await sell(client, eid, 30, offset=1000)
                # A consumer that read entries and died before XACK: some written, some not.
                read = await redis.xreadgroup(LEDGER_GROUP, "crashed-worker", {stream: ">"}, count=20)
                assert read and len(read[0][1]) == 20
                await write_batch(pool, eid, read[0][1][:10])
                await asyncio.sleep(0.6)
                with start_worker(local, "ledger", tmp_root):
                    assert await eventually(lambda: _count_is(orders, 50), timeout=10), await orders()
                    assert await eventually(lambda: _drained(redis, stream), timeout=10)
                    assert await pool.fetchval("SELECT count(*) FROM tickets WHERE event_id = $1", eid) == 50

                    # Closed and drained: the event leaves the polled set ...
                    assert (await client.post(f"/v1/events/{eid}/close", headers=auth(key))).status_code == 200
                    assert await eventually(lambda: _only(redis, prefix, set()), timeout=10), \
                        await dirty_members(redis, prefix)
                    # ... and a refund afterwards (a new entry on a pruned event) is still written.
                    order_id = sold[0]["order_id"]
                    resp = await client.post(f"/v1/orders/{order_id}/refund", headers=auth(key))
                    assert resp.status_code == 200, resp.text

                    async def refunded() -> bool:
                        return await pool.fetchval("SELECT status FROM orders WHERE id = $1",
                                                   uuid.UUID(order_id)) == "refunded"

                    assert await eventually(refunded, timeout=5)
                    assert await eventually(lambda: _only(redis, prefix, set()), timeout=10)

                rows = await pool.fetch(
                    "SELECT p.kind, p.provider FROM payments p JOIN orders o ON o.id = p.order_id "
                    "WHERE o.event_id = $1", eid)
                assert sorted(r["kind"] for r in rows) == ["capture"] * 50 + ["refund"]
                assert {r["provider"] for r in rows} == {"acme-pay"}
                voids = [f for _, f in await redis.xrange(stream) if f[b"k"] == b"void"]
                assert orjson.loads(voids[0][b"o"])["provider"] == "acme-pay"


async def _count_is(fetch, n: int) -> bool:
    return await fetch() == n


async def _drained(redis: aioredis.Redis, stream: str) -> bool:
    group = next(g for g in await redis.xinfo_groups(stream) if g["name"] == LEDGER_GROUP.encode())
    return group["pending"] == 0 and group["lag"] == 0


async def test_the_provider_named_in_the_entry_reaches_the_payments_rows(app, client, database_url, settings):
    _, key = await new_org(database_url)
    event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 50}), headers=auth(key))).json()
    eid = event["id"]
    runtime = app.gateway.runtime
    prefix = settings.redis_prefix
    stream = event_key(prefix, eid, "ledger")
    now = int(time.time() * 1000)
    paid, old_paid = str(uuid.uuid4()), str(uuid.uuid4())
    orphan, old_orphan = str(uuid.uuid4()), str(uuid.uuid4())

    def order(order_id: str, serial: int, provider: str) -> dict:
        return {"k": "order", "o": orjson.dumps({"payment_id": f"pay-{order_id}", "provider": provider,
                                                 "amount_minor": 2500, "currency": "EUR"}),
                "d": orjson.dumps({"order_id": order_id, "hold_id": f"h-{order_id}", "buyer": "b", "seats": [],
                                   "ga": {"floor": 1}, "count": 1, "serial_start": serial, "confirmed_at_ms": now})}

    def void(order_id: str, refund: dict) -> dict:
        return {"k": "void", "d": orjson.dumps({"order_id": order_id, "voided_at_ms": now}),
                "o": orjson.dumps({"refund_id": f"ref-{order_id}", "amount_minor": 2500, **refund})}

    def orphan_refund(order_id: str, extra: dict) -> dict:
        return {"k": "orphan_refund", "o": b"{}",
                "d": orjson.dumps({"order_id": order_id, "hold_id": f"h-{order_id}", "payment_id": f"pay-{order_id}",
                                   "refund_id": f"ref-{order_id}", "amount_minor": 2500, "currency": "EUR",
                                   "at_ms": now, **extra})}

    for fields in (order(paid, 1, "acme-pay"), void(paid, {"provider": "acme-pay"}),
                   order(old_paid, 2, "other-pay"), void(old_paid, {}),  # an older void without the provider
                   orphan_refund(orphan, {"provider": "acme-pay"}), orphan_refund(old_orphan, {})):
        await runtime.redis.xadd(stream, fields)
    await runtime.redis.sadd(ledger_dirty_set(prefix), eid)  # what every producer does after its XADD
    worker = LedgerWorker(runtime, consumer="provider-test")
    while await worker.step():
        pass
    pool = await runtime.pg()
    rows = await pool.fetch("SELECT hold_id, kind, provider FROM payments WHERE hold_id = ANY($1::text[])",
                            [f"h-{o}" for o in (paid, old_paid, orphan, old_orphan)])
    got = {(r["hold_id"][2:], r["kind"]): r["provider"] for r in rows}
    assert got == {
        (paid, "capture"): "acme-pay", (paid, "refund"): "acme-pay",
        (old_paid, "capture"): "other-pay", (old_paid, "refund"): "other-pay",  # the capture's provider
        (orphan, "capture"): "acme-pay", (orphan, "refund"): "acme-pay",
        (old_orphan, "capture"): "simulator", (old_orphan, "refund"): "simulator",  # an old entry
    }
