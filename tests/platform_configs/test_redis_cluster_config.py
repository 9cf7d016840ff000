"""platform/redis/cluster/: six redis-server processes started from the shipped node configuration become,
through the shipped create-cluster.sh, a Redis Cluster of three masters with a replica each that the
application's own client reads and writes, with the settings a sale relies on in force (no eviction,
append-only file, the other shards answering while one is down). docs/scaling.md, "Redis Cluster"."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.stack.embedded import MissingBinary, find_binary, port_open, spawn, stop_process
from tests.conftest import need
from tests.utils.cluster import cluster_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "platform" / "redis" / "cluster"
NODE_CONF = CLUSTER_DIR / "redis-node.conf"


def _binaries() -> tuple[str, str]:
    try:
        return find_binary("redis-server"), find_binary("redis-cli")
    except MissingBinary as exc:
        need(str(exc))
        raise


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Six nodes from redis-node.conf; only what differs per host is given on the command line (port,
    address, directory), as a deployment would in its copy of the file."""
    server, _ = _binaries()
    root = tmp_path_factory.mktemp("redis-cluster")
    procs, ports = [], []
    try:
        for i in range(6):
            port = cluster_port()
            node_dir = root / f"node{i}"
            node_dir.mkdir()
            procs.append(spawn([server, str(NODE_CONF), "--port", str(port), "--bind", "127.0.0.1",
                                "--dir", str(node_dir), "--cluster-config-file", f"nodes-{port}.conf"],
                               log=node_dir / "redis.log"))
            ports.append(port)
        deadline = time.monotonic() + 20
        for proc, port in zip(procs, ports):
            while not port_open(port):
                assert proc.poll() is None, (root / f"node{ports.index(port)}" / "redis.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"node on {port} did not start"
                time.sleep(0.05)
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


def _info(port: int) -> dict[str, str]:
    client = redis.Redis(port=port)
    try:
        text = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in text.strip().splitlines())


def test_each_node_runs_in_cluster_mode_with_the_settings_a_sale_needs(nodes: list[int]) -> None:
    client = redis.Redis(port=nodes[0], decode_responses=True)
    try:
        assert client.info("cluster")["cluster_enabled"] == 1
        assert _info(nodes[0])["cluster_state"] == "fail"  # CLUSTER INFO answers: no slots assigned yet
        config = {k: client.config_get(k)[k] for k in (
            "maxmemory-policy", "appendonly", "cluster-require-full-coverage", "cluster-node-timeout")}
    finally:
        client.close()
    assert config == {"maxmemory-policy": "noeviction", "appendonly": "yes",
                      "cluster-require-full-coverage": "no", "cluster-node-timeout": "5000"}


def test_create_cluster_makes_three_masters_with_a_replica_each(nodes: list[int]) -> None:
    _, cli = _binaries()
    env = {**os.environ, "PATH": f"{os.path.dirname(cli)}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["sh", str(CLUSTER_DIR / "create-cluster.sh"), *(f"127.0.0.1:{p}" for p in nodes)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "[OK] All 16384 slots covered." in out.stdout

    deadline = time.monotonic() + 20
    while not all(_info(p)["cluster_state"] == "ok" for p in nodes):
        assert time.monotonic() < deadline, "the Cluster did not reach cluster_state:ok"
        time.sleep(0.1)

    client = redis.RedisCluster(host="127.0.0.1", port=nodes[0])
    try:
        # Keys of different events land on different shards and are read back through the Cluster.
        for event in range(30):
            client.set(f"fgcfg:{{ev:{event}}}:probe", event)
        assert [int(client.get(f"fgcfg:{{ev:{event}}}:probe")) for event in range(30)] == list(range(30))
        owners = {client.get_node_from_key(f"fgcfg:{{ev:{event}}}:probe").name for event in range(30)}
        assert len(owners) == 3
    finally:
        client.close()
    # Three masters, each with one replica streaming from it.
    deadline = time.monotonic() + 20
    while True:
        roles = [_replication(p) for p in nodes]
        masters = [r for r in roles if r["role"] == "master"]
        replicas = [r for r in roles if r["role"] == "slave" and r["master_link_status"] == "up"]
        if len(replicas) == 3:
            break
        assert time.monotonic() < deadline, roles
        time.sleep(0.1)
    assert len(masters) == 3 and all(m["connected_slaves"] == 1 for m in masters), roles


def _replication(port: int) -> dict:
    node = redis.Redis(port=port, decode_responses=True)
    try:
        return node.info("replication")
    finally:
        node.close()


def test_usage_line_without_six_nodes() -> None:
    out = subprocess.run(["sh", str(CLUSTER_DIR / "create-cluster.sh"), "127.0.0.1:7000"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "3 masters + 3 replicas" in out.stderr
