"""A real local Redis Cluster (3 masters, optionally a replica each) for the Lua suite and the
application's end-to-end cluster tests."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from gateway.stack.embedded import RedisServer, find_binary, port_open


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            if not port_open(port):
                return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 0) -> None:
        # A directory of its own: a session fixture imported into several test modules makes one cluster
        # per module, and nodes sharing a nodes.conf refuse to start.
        root.mkdir(parents=True, exist_ok=True)
        self.root = root = Path(tempfile.mkdtemp(prefix="cluster-", dir=root))
        self.nodes = [RedisServer(root / f"node{i}", port=cluster_port(), extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000"]) for i in range(masters * (1 + replicas))]
        self.replicas = replicas

    def start(self) -> "LocalCluster":
        cli = find_binary("redis-cli")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas),
                              "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = redis.Redis(port=node.port)
                try:
                    states.append(_state(client.execute_command("CLUSTER INFO")) == "ok")
                finally:
                    client.close()
            if all(states) and self._replicas_synced():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the local Redis Cluster did not become ready within 30 s")

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        """The application's form: `redis+cluster://` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes) + "/"

    def _replicas_synced(self) -> bool:
        if not self.replicas:
            return True
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def shards(self) -> dict[int, tuple[int, list[int]]]:
        """slot -> (port of its master, ports of its replicas), as the cluster says now."""
        nodes = None
        for node in self.nodes:  # the first node that answers (one may have been killed)
            if node.proc is not None and node.proc.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_connect_timeout=1, socket_timeout=2)
            try:
                nodes = client.execute_command("CLUSTER NODES")  # redis-py parses it: address -> fields
                break
            except redis.ConnectionError:
                continue
            finally:
                client.close()
        if nodes is None:
            raise RuntimeError("no node of the cluster answers")
        out: dict[int, tuple[int, list[int]]] = {}
        for address, node in nodes.items():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            replicas = [int(a.split("@")[0].rsplit(":", 1)[1]) for a, n in nodes.items()
                        if n["master_id"] == node["node_id"] and "fail" not in n["flags"]]
            for first, *last in node["slots"]:
                for slot in range(int(first), int(last[0] if last else first) + 1):
                    out[slot] = (port, replicas)
        return out

    def failover(self, slot: int, timeout: float = 20.0) -> tuple[int, int]:
        """`CLUSTER FAILOVER` on a replica of the master of `slot`; returns (old master, new master)
        ports once every node routes the slot to the new master."""
        old, replicas = self.shards()[slot]
        if not replicas:
            raise RuntimeError(f"slot {slot} has no replica to fail over to")
        new = replicas[0]
        client = redis.Redis(port=new)
        try:
            client.execute_command("CLUSTER FAILOVER")
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = []
            for node in self.nodes:
                c = redis.Redis(port=node.port)
                try:
                    views.append(_owner(c.execute_command("CLUSTER SLOTS"), slot))
                except redis.RedisError:
                    views.append(-1)
                finally:
                    c.close()
            if all(v == new for v in views if v != -1):
                return old, new
            time.sleep(0.05)
        raise RuntimeError(f"the failover of slot {slot} to port {new} did not complete within {timeout:.0f} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _ranges(reply) -> list[tuple[int, int, int, list[int]]]:
    """(first slot, last slot, master port, replica ports) of a CLUSTER SLOTS reply (raw, or as redis-py
    parses it)."""
    if isinstance(reply, dict):
        return [(int(a), int(b), int(v["primary"][1]), [int(r[1]) for r in v["replicas"]])
                for (a, b), v in reply.items()]
    return [(int(e[0]), int(e[1]), int(e[2][1]), [int(r[1]) for r in e[3:]]) for e in reply]


def _owner(reply, slot: int) -> int:
    for start, end, master, _ in _ranges(reply):
        if start <= slot <= end:
            return master
    return -1


def _state(info) -> str:
    if isinstance(info, dict):
        value = info.get("cluster_state", "")
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        value = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("cluster_state:")), "")
    return value.decode() if isinstance(value, bytes) else value
