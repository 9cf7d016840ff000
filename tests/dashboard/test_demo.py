"""`make up` (`flashgate up --demo`) prints the dashboard URL of the demo event and a key that opens it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.stack.supervisor import Stack
from tests.utils.factories import auth
from tests.utils.live import stack_env

pytestmark = pytest.mark.anyio


async def test_demo_prints_the_dashboard_url_and_a_key_that_opens_it(settings, client, capsys, tmp_root):
    env = {**stack_env(settings), "FLASHGATE_DATA_DIR": str(tmp_root / "demo-data")}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--json", "--gateway-url",
                          "http://127.0.0.1:8000"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    demo = json.loads(out.stdout)
    links = {link["name"]: link["url"] for link in demo["links"]}
    assert links["dashboard"] == f"http://127.0.0.1:8000/dashboard/{demo['event_id']}"

    # what `flashgate up` prints from it
    Stack(settings=settings, port=8000, workers=1)._print_urls(demo)
    printed = capsys.readouterr().out
    assert f"dashboard    http://127.0.0.1:8000/dashboard/{demo['event_id']}" in printed
    assert f"demo API key {demo['api_key']}" in printed

    # the key opens the demo event's figures (what the dashboard shows)
    assert (await client.get(f"/dashboard/{demo['event_id']}")).status_code == 200
    resp = await client.get(f"/v1/events/{demo['event_id']}/stats", headers=auth(demo["api_key"]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["totals"]["capacity"] == 3 * 10 * 20 + 500
