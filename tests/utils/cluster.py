"""A real local 3-master Redis Cluster for the Lua suite."""

from __future__ import annotations

import subprocess
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
    def __init__(self, root: Path, masters: int = 3) -> None:
        self.root = root
        self.nodes = [RedisServer(root / f"node{i}", port=cluster_port(), extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000"]) for i in range(masters)]

    def start(self) -> "LocalCluster":
        cli = find_binary("redis-cli")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
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
            if all(states):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the local Redis Cluster did not become ready within 30 s")

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _state(info) -> str:
    if isinstance(info, dict):
        value = info.get("cluster_state", "")
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        value = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("cluster_state:")), "")
    return value.decode() if isinstance(value, bytes) else value
