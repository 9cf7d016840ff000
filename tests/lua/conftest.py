"""The Lua suite runs against the session's Redis and against a real local Redis Cluster."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.stack.embedded import MissingBinary, find_binary
from gateway.store.cluster import ClusterWire
from gateway.store.redis import redis_client
from gateway.store.scripts import Scripts
from tests.conftest import need
from tests.utils.cluster import LocalCluster

_ids = itertools.count(10**12)  # far from the ids Postgres gives API-created events


@pytest.fixture(scope="session")
def local_cluster(tmp_root: Path) -> Iterator[LocalCluster | None]:
    try:
        find_binary("redis-server")
        find_binary("redis-cli")
    except MissingBinary as exc:
        yield None  # tests using it skip (or fail in CI) with the reason
        return
    cluster = LocalCluster(tmp_root / "cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster", "cluster-wire"])
async def scripts(request, redis_server_url: str, local_cluster) -> AsyncIterator[Scripts]:
    wire = None
    if request.param == "single":
        client = redis_client(redis_server_url)  # the application's own client: callers queue for a connection
    elif request.param == "cluster-wire":
        # The application's own Cluster clients: every script call on the slot-routed hot-path wire.
        if local_cluster is None:
            need("redis-server / redis-cli not installed: the Redis Cluster variant of the Lua suite cannot run "
                 "(sudo apt-get install redis-server redis-tools)")
        client = redis_client(local_cluster.url)
        wire = ClusterWire(local_cluster.url, timeout_s=5.0)
    else:
        if local_cluster is None:
            need("redis-server / redis-cli not installed: the Redis Cluster variant of the Lua suite cannot run "
                 "(sudo apt-get install redis-server redis-tools)")
        # redis-py's cluster client fails (MaxConnectionsError) rather than waiting for a connection;
        # the racing tests open ~100 concurrent calls, so give each node room.
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in local_cluster.startup_nodes],
                              max_connections=1024)
    s = Scripts(client, wire=wire)
    yield s
    if wire is not None:
        await wire.close()
    await client.aclose()


@pytest.fixture
def event_id() -> int:
    return next(_ids)
