"""`flashgate up` smoke test: whole stack on free ports, ready, usable, stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from gateway.stack.embedded import free_port, port_open

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_up_serves_and_stops_cleanly(tmp_root):
    # Not pytest's tmp_path: its base directory is private to root, and Postgres runs as another user.
    tmp_path = tmp_root / "up-smoke"
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("FLASHGATE_")}
    env["FLASHGATE_DATA_DIR"] = str(tmp_path / "var")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--port", str(port), "--workers", "1",
                             "--demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack_file = tmp_path / "var" / "stack.json"
    try:
        deadline = time.monotonic() + 90
        while not stack_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "stack did not come up"
            time.sleep(0.2)
        info = json.loads(stack_file.read_text())
        assert info["gateway_url"] == f"http://127.0.0.1:{port}"
        ready = httpx.get(info["gateway_url"] + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "org", "create", "Smoke Org", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        org = json.loads(out.stdout)
        assert org["api_key"].startswith("fgk_") and org["name"] == "Smoke Org"
        events = httpx.get(info["gateway_url"] + "/v1/events", headers={"Authorization": f"Bearer {org['api_key']}"})
        assert events.status_code == 200 and events.json() == {"events": []}
        assert info["demo"]["event_id"] and info["payments_url"].startswith("http")
        # The demo event comes with a door device: its token scans (docs/scanning.md).
        door = {"Authorization": f"Bearer {info['demo']['device_token']}"}
        manifest = httpx.get(info["gateway_url"] + "/v1/scan/manifest", headers=door, timeout=10)
        assert manifest.status_code == 200 and manifest.json()["gate"] == "main"
        # Prometheus metrics of the stack's gateway, the door's scan counted (docs/operations.md).
        metrics = httpx.get(info["gateway_url"] + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "flashgate_redis_up 1.0" in metrics.text
        scanned = re.search(r'flashgate_http_request_duration_seconds_count\{method="GET",route="/v1/scan/manifest",'
                            r'status="2xx"\} (\S+)', metrics.text)
        assert scanned and float(scanned.group(1)) == 1.0, metrics.text[:2000]
        pids = list(info["children"].values())
        redis_port = int(info["redis_url"].rsplit(":", 1)[1].split("/")[0])
        pg_port = int(info["database_url"].rsplit(":", 1)[1].split("/")[0])
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Flashgate is running." in output and "stopped" in output
    assert f"door token   {info['demo']['device_token']}" in output and "/scan#token=" in output
    assert not stack_file.exists()
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids), "a child process outlived the stack"
    assert not port_open(port) and not port_open(redis_port) and not port_open(pg_port)
