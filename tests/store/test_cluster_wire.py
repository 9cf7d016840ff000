"""The Redis Cluster access layer against a real local 3-master Cluster: the slot-routed hot-path wire
follows ASK and MOVED while a slot migrates, reloads a script a node lacks, finds a new map when a
node cannot be reached, and the redis-py cluster client makes callers queue for a connection and
answers within its budget."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.stack.embedded import free_port
from gateway.store.cluster import ClusterWire, cluster_client, parse_cluster_url
from gateway.store.keys import event_key, event_keys
from gateway.store.scripts import Scripts
from gateway.store.wire import encode
from tests.conftest import need
from tests.lua.conftest import local_cluster  # noqa: F401 - fixture
from tests.utils.cluster import LocalCluster

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

_ids = itertools.count(7 * 10**12)


@pytest.fixture
def cluster(local_cluster: LocalCluster | None) -> LocalCluster:  # noqa: F811
    if local_cluster is None:
        need("redis-server / redis-cli not installed: the Redis Cluster tests cannot run "
             "(sudo apt-get install redis-server redis-tools)")
    return local_cluster


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port)


def _ids_of(cluster: LocalCluster) -> dict[int, str]:
    with _node(cluster.nodes[0].port) as r:
        nodes = r.execute_command("CLUSTER NODES")
    return {int(a.split("@")[0].rsplit(":", 1)[1]): n["node_id"] for a, n in nodes.items()}


def _owner(cluster: LocalCluster, slot: int) -> int:
    return cluster.shards()[slot][0]


def _empty_event(cluster: LocalCluster) -> tuple[int, int]:
    """An event id whose slot holds no key yet (a slot can move only when empty here)."""
    while True:
        event_id = next(_ids)
        slot = key_slot(event_key("cw", event_id, "meta").encode())
        with _node(_owner(cluster, slot)) as r:
            if r.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0:
                return event_id, slot


def _assign(cluster: LocalCluster, slot: int, port: int) -> None:
    node_id = _ids_of(cluster)[port]
    for node in cluster.nodes:
        with _node(node.port) as r:
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", node_id)


def test_cluster_url_form() -> None:
    u = parse_cluster_url("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/")
    assert u.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (u.username, u.password, u.tls) == ("app", "s@cret", False)
    assert u.node_url("10.0.0.9", 7005) == "redis://app:s%40cret@10.0.0.9:7005/0"
    tls = parse_cluster_url("rediss+cluster://h1:6380?ssl_cert_reqs=none")
    assert tls.tls and tls.node_url("h1", 6380) == "rediss://h1:6380/0?ssl_cert_reqs=none"
    with pytest.raises(ValueError, match="only database 0"):
        parse_cluster_url("redis+cluster://h1:7000/3")
    with pytest.raises(ValueError, match="no seed node"):
        parse_cluster_url("redis+cluster:///")


async def test_wire_follows_ask_and_moved_while_a_slot_migrates(cluster: LocalCluster) -> None:
    wire = ClusterWire(cluster.url, timeout_s=2.0)
    event_id, slot = _empty_event(cluster)
    key = event_key("cw", event_id, "meta")
    source = _owner(cluster, slot)
    target = next(n.port for n in cluster.nodes if n.port != source)
    ids = _ids_of(cluster)
    try:
        assert await wire.call(encode("EXISTS", key), slot) == 0
        assert wire.master_of(slot) == f"127.0.0.1:{source}"
        # Migrating: the source answers ASK for a key it does not have; the command lands on the target.
        with _node(target) as r:
            r.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        with _node(source) as r:
            r.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        assert await wire.call(encode("HSET", key, "status", "open"), slot) == 1
        assert wire.redirects == 1
        with _node(target) as r:
            assert r.execute_command("ASKING") and r.hget(key, "status") == b"open"
        assert wire.master_of(slot) == f"127.0.0.1:{source}"  # ASK moves one command, not the slot
        # Migrated: MOVED, and the wire remembers the new master.
        _assign(cluster, slot, target)
        assert await wire.call(encode("HGET", key, "status"), slot) == b"open"
        assert wire.master_of(slot) == f"127.0.0.1:{target}"
        before = wire.redirects
        assert await wire.call(encode("HGET", key, "status"), slot) == b"open"
        assert wire.redirects == before  # straight to the new master now
    finally:
        with _node(target) as r:
            r.delete(key)
        _assign(cluster, slot, source)
        await wire.close()


async def test_scripts_reload_on_the_node_that_lacks_them(cluster: LocalCluster) -> None:
    client = cluster_client(cluster.url, timeout_s=2.0)
    wire = ClusterWire(cluster.url, timeout_s=2.0)
    scripts = Scripts(client, wire=wire)
    event_id, slot = _empty_event(cluster)
    try:
        with _node(_owner(cluster, slot)) as r:
            r.script_flush()  # as after a restart, or on a promoted replica
        reply = await scripts.raw("snapshot", event_keys("cw", event_id), [])
        assert reply[2] == 0  # version of an event that does not exist yet
        with _node(_owner(cluster, slot)) as r:
            assert r.script_exists(scripts["snapshot"].sha) == [True]
    finally:
        await wire.close()
        await client.aclose()


async def test_wire_finds_a_new_map_when_a_node_cannot_be_reached(cluster: LocalCluster) -> None:
    dead = free_port()
    seeds = f"127.0.0.1:{dead}," + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    wire = ClusterWire(f"redis+cluster://{seeds}", timeout_s=2.0)
    event_id, slot = _empty_event(cluster)
    key = event_key("cw", event_id, "meta")
    try:
        assert await wire.call(encode("EXISTS", key), slot) == 0  # a dead seed is skipped
        refreshes = wire.refreshes
        wire._slots[slot] = f"127.0.0.1:{dead}"  # a map that still names a master that is gone
        assert await wire.call(encode("EXISTS", key), slot) == 0
        assert wire.refreshes == refreshes + 1 and wire.master_of(slot) == f"127.0.0.1:{_owner(cluster, slot)}"
    finally:
        await wire.close()
    # No node reachable at all: a RedisError within the budget, never a hang.
    nowhere = ClusterWire(f"redis+cluster://127.0.0.1:{dead}", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(RedisError):
        await nowhere.call(encode("EXISTS", key), slot)
    assert time.monotonic() - started < 2
    await nowhere.close()


async def test_cluster_client_callers_queue_for_a_connection(cluster: LocalCluster) -> None:
    """redis-py's cluster pools fail at once when full; the application's client makes callers wait."""
    client = cluster_client(cluster.url, timeout_s=2.0, max_connections=2)
    try:
        keys = [event_key("cw", next(_ids), "meta") for _ in range(40)]
        await asyncio.gather(*(client.hset(k, "n", 1) for k in keys))
        got = await asyncio.gather(*(client.hget(k, "n") for k in keys))
        assert got == [b"1"] * len(keys)
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.delete(k)
        assert await pipe.execute() == [1] * len(keys)
    finally:
        await client.aclose()
    nowhere = cluster_client(f"redis+cluster://127.0.0.1:{free_port()}", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(RedisError):
        await nowhere.get("x")
    assert time.monotonic() - started < 2
    await nowhere.aclose()
