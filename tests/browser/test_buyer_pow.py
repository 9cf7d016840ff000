"""The buyer page joins a waiting room that asks for a proof of work: it solves the challenge with
WebCrypto in real headless Chromium and joins, where a client that does not gets 428."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails in CI) with the reason
    expect = None

from gateway.waiting_room.pow import leading_zero_bits
from tests.utils.factories import auth, seat_spec
from tests.utils.live import start_gateway

pytestmark = pytest.mark.browser

BITS = 12  # a fraction of a second in the browser; the default (16) is measured by bench/bench_pow.py


def test_the_buyer_page_solves_the_challenge_and_joins(page: Any, settings, org_key: str, tmp_path: Path) -> None:
    pow_on = settings.model_copy(update={"queue_pow": True, "queue_pow_bits": BITS})
    with start_gateway(pow_on, tmp_path, workers=1) as url, httpx.Client(base_url=url, timeout=10) as api:
        resp = api.post("/v1/events", json=seat_spec(sections=1, rows=2, seats=6, queue=True, name="Proof Night"),
                        headers=auth(org_key))
        assert resp.status_code == 201, resp.text
        eid = resp.json()["id"]
        assert api.post(f"/v1/events/{eid}/open", headers=auth(org_key)).status_code == 200
        script = api.post("/v1/buyer-token").json()["buyer_token"]
        refused = api.post(f"/v1/events/{eid}/queue", headers=auth(script))
        assert refused.status_code == 428 and refused.json()["error"]["code"] == "proof_of_work_required"

        page.goto(f"{url}/buy/{eid}")
        page.locator("#step-queue").wait_for()
        expect(page.locator("#queue-position")).to_have_text(re.compile(r"^[0-9]+$"))
        saved = page.evaluate("([k]) => JSON.parse(localStorage.getItem(k))", [f"flashgate.event.{eid}.proof"])
        assert leading_zero_bits(hashlib.sha256(saved["proof"].encode()).digest()) >= BITS
        stats = api.get(f"/v1/events/{eid}/stats", headers=auth(org_key)).json()
        assert stats["queue"]["joined"] == 1  # the page, not the script
        solved = page.evaluate("performance.getEntriesByName('flashgate-proof-of-work').length")
        assert solved == 1
