"""A poll costs no Redis command: counted with INFO commandstats on a private redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.stack.embedded import RedisServer
from tests.utils.factories import auth
from tests.waiting_room.conftest import RELAXED, app_client, new_buyer

pytestmark = pytest.mark.anyio

POLLS = 3000


def total_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


async def test_polls_cost_no_redis_command(settings, tmp_root):
    server = RedisServer(tmp_root / "redis-poll-cost").start()
    try:
        private = settings.model_copy(update={"redis_url": server.url, "redis_prefix": "pc"})
        admin = redis.Redis.from_url(server.url)
        admin.hset("pc:{ev:1}:meta", mapping={"status": "on_sale", "queue_mode": 1, "admission_rate": 5})
        async with app_client(private, **{**RELAXED, "queue_cache_s": 0.25}) as client:
            tokens = []
            for _ in range(20):
                me = await new_buyer(client)
                tokens.append((await client.post("/v1/events/1/queue", headers=auth(me["buyer_token"])))
                              .json()["queue_token"])
            assert (await client.get("/v1/events/1/queue", headers=auth(tokens[0]))).status_code == 200
            admin.config_resetstat()
            started = time.monotonic()
            for i in range(POLLS):
                resp = await client.get("/v1/events/1/queue", headers=auth(tokens[i % len(tokens)]))
                assert resp.status_code == 200 and resp.json()["status"] == "waiting"
                if i % 50 == 0:  # let the background refresh run, as it does under real traffic
                    await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            calls = total_calls(admin)
        # background work only: one cache refresh (3 commands) per 0.25 s, one liveness flush per second
        budget = 3 * (elapsed / 0.25 + 2) + 3 * (elapsed + 2)
        print(f"{POLLS} polls in {elapsed:.2f} s: {calls} Redis commands (background budget {budget:.0f})")
        assert calls <= budget and calls < POLLS / 20
        admin.close()
    finally:
        server.stop()
