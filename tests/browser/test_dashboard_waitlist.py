"""The organiser dashboard after a final sell-out shows the waiting list: buyers waiting and open offers
(real headless Chromium, a live gateway and a real admission worker)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails in CI) with the reason
    expect = None

from tests.browser.conftest import create_event
from tests.browser.test_dashboard_page import log_in
from tests.utils.factories import auth, seat_spec
from tests.utils.live import start_worker

pytestmark = pytest.mark.browser


def _until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("timed out")


def test_the_waiting_list_of_a_sold_out_event(page: Any, api: httpx.Client, org_key: str, live_gateway: str,
                                             settings, tmp_root) -> None:
    event = create_event(api, org_key, seat_spec(sections=0, ga={"floor": 1}, limit=1, queue=True,
                                                 name="Last Ticket Night"))
    eid = event["id"]
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(f"{live_gateway}/dashboard/{eid}")
    log_in(page, org_key)
    with start_worker(settings, "admission", tmp_root):
        me = auth(api.post("/v1/buyer-token").json()["buyer_token"])
        token = api.post(f"/v1/events/{eid}/queue", headers=me).json()["queue_token"]

        def admission() -> str | None:
            body = api.get(f"/v1/events/{eid}/queue", headers=auth(token)).json()
            return body.get("admission_token")

        me["X-Admission-Token"] = _until(admission)
        hold = api.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=me)
        assert hold.status_code == 201, hold.text
        paid = api.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={},
                        headers={**me, "Idempotency-Key": "dash-waitlist-1"})
        assert paid.status_code == 201, paid.text
        _until(lambda: api.get(f"/v1/events/{eid}/stats", headers=auth(org_key)).json()["queue"]["sold_out"])
        for _ in range(2):
            fan = auth(api.post("/v1/buyer-token").json()["buyer_token"])
            assert api.post(f"/v1/events/{eid}/waitlist", headers=fan).status_code == 201
        expect(page.locator("#h-eta")).to_have_text("sold out · waiting list 2, 0 offered", timeout=15_000)
