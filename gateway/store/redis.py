"""The Redis access layer of one process.

`RedisStore` owns the three ways the application talks to Redis:

- `client`: redis-py for ordinary commands, with a bounded connection pool that
  makes a caller wait for a free connection (at most the command budget) instead
  of failing, and a bounded time per command;
- `wire`: the hot-path pipelined connection (wire.py), every call bounded by the
  same budget;
- `scripts`: the one Lua script runner (scripts.py), on the wire connection.

A `redis+cluster://` URL names a Redis Cluster (cluster.py): `client` is then redis-py's
cluster client (callers queue for a connection there too) and `wire` a `ClusterWire`,
one pipelined connection per master, each script call routed by its keys' slot.

Every Redis failure surfaces as a `redis.exceptions.RedisError` (timeouts
included), which both HTTP fronts answer with `503 unavailable` and
`Retry-After`: a stalled Redis never hangs a request.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway.core.config import Settings
from gateway.store.cluster import ClusterWire, cluster_client, is_cluster_url
from gateway.store.scripts import Scripts
from gateway.store.wire import WireConnection


def redis_client(url: str, *, timeout_s: float = 2.0, max_connections: int = 64, **kwargs: Any) -> aioredis.Redis:
    """A redis-py client whose every command (connection wait included) is bounded by `timeout_s`
    (a cluster client for a `redis+cluster://` URL)."""
    if is_cluster_url(url):
        return cluster_client(url, timeout_s=timeout_s, max_connections=max_connections,  # type: ignore[return-value]
                              **kwargs)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_connect_timeout=min(1.0, timeout_s),
        socket_timeout=kwargs.pop("socket_timeout", timeout_s), health_check_interval=0, **kwargs)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


class RedisStore:
    def __init__(self, settings: Settings, client: aioredis.Redis, wire: WireConnection | ClusterWire | None) -> None:
        self.prefix = settings.redis_prefix
        self.client = client
        self.wire = wire
        self.scripts = Scripts(client, wire=wire)

    @classmethod
    def from_settings(cls, settings: Settings) -> "RedisStore":
        url = settings.redis_url
        if not url:
            raise ValueError("REDIS_URL must be set (flashgate up sets it)")
        budget = settings.redis_timeout_s
        wire: WireConnection | ClusterWire
        if is_cluster_url(url):
            wire = ClusterWire(url, timeout_s=budget)
        else:
            wire = WireConnection(url, timeout_s=budget)  # refuses URL schemes it cannot speak, in one sentence
        return cls(settings, redis_client(url, timeout_s=budget, max_connections=settings.redis_max_connections),
                   wire)

    async def close(self) -> None:
        if self.wire is not None:
            await self.wire.close()
        await self.client.aclose()
