"""The organiser dashboard (`/dashboard/{event_id}`) in real headless Chromium against live gateways:
log-in with an organisation key (kept for the tab, never in the URL), live changes after sales made
through the API, and reconnection after the gateway it streams from restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails in CI) with the reason
    expect = None

from gateway.stack.embedded import free_port, spawn, stop_process
from tests.browser.conftest import SCREENSHOTS, create_event
from tests.utils.factories import auth, seat_spec
from tests.utils.live import stack_env

pytestmark = pytest.mark.browser


class Restartable:
    """A gateway process on a fixed port that a test can stop and start again."""

    def __init__(self, settings: Any, log_dir: Path) -> None:
        self.settings, self.log = settings, log_dir / "dashboard-gateway.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--workers", "1"],
                          log=self.log, env=stack_env(self.settings))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(self.log.read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture
def restartable(settings, tmp_root, payment_simulator) -> Iterator[Restartable]:
    gw = Restartable(settings, tmp_root)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def buy(api: httpx.Client, event_id: int, seats: list[str] | None = None, ga: int = 0, pay: bool = True) -> dict:
    me = auth(api.post("/v1/buyer-token").json()["buyer_token"])
    h = api.post(f"/v1/events/{event_id}/holds", json={"seats": seats} if seats else {"ga": {"floor": ga}},
                 headers=me)
    assert h.status_code == 201, h.text
    if pay:
        o = api.post(f"/v1/holds/{h.json()['hold_id']}/checkout", json={},
                     headers={**me, "Idempotency-Key": f"dash-{time.monotonic_ns()}"})
        assert o.status_code == 201, o.text
        return o.json()
    return h.json()


def log_in(page: Any, key: str) -> None:
    page.get_by_label("Organisation API key").fill(key)
    page.get_by_role("button", name="Show the dashboard").click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


# -- without a browser ---------------------------------------------------------------------------------------


def test_dashboard_page_and_assets_are_served(api: httpx.Client) -> None:
    page = api.get("/dashboard/1")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    head = page.text.split("<body>")[0]
    assert '<script src="/dashboard/static/dashboard.js"' in head and "http" not in head
    for name, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = api.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    missing = api.get("/dashboard/static/dashboard.html")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get("/dashboard/0").status_code == 422


# -- in the browser -------------------------------------------------------------------------------------------


def test_live_figures_follow_sales_and_the_key_stays_out_of_urls(page: Any, api: httpx.Client, org_key: str,
                                                                  live_gateway: str) -> None:
    event = create_event(api, org_key, seat_spec(sections=3, rows=6, seats=14, ga={"floor": 40},
                                                 name="Harbour Lights Live"))
    eid = event["id"]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(f"{live_gateway}/dashboard/{eid}")
    page.get_by_role("heading", name="Live dashboard").wait_for()
    log_in(page, org_key)
    page.get_by_role("heading", name="Harbour Lights Live").wait_for()
    expect(page.locator("#h-sold")).to_have_text("0")
    expect(page.locator("#seatmap rect.seat")).to_have_count(3 * 6 * 14)

    first = buy(api, eid, ["A-1-1", "A-1-2", "A-1-3"])
    buy(api, eid, ["B-2-5", "B-2-6"], pay=False)
    buy(api, eid, ga=4)
    expect(page.locator("#h-sold")).to_have_text("7")
    expect(page.locator("#h-held")).to_have_text("2")
    expect(page.locator('#seatmap rect[data-seat="0"]')).to_have_class("seat s2")
    expect(page.locator('#seatmap rect[data-seat="2"]')).to_have_class("seat s2")
    expect(page.locator(f'#seatmap rect[data-seat="{14 * 6 + 14 + 4}"]')).to_have_class("seat s1")
    expect(page.locator("#seatmap rect.s2")).to_have_count(3)
    expect(page.locator('#sections tr[data-name="floor"] td').nth(1)).to_have_text("4")
    expect(page.locator("#spm-chart")).to_have_attribute("data-total", "7")
    expect(page.locator("#h-revenue")).to_contain_text("250")  # 3 x 50.00 + 4 x 25.00
    expect(page.locator("#providers li").first).to_have_attribute("data-state", "closed")

    # a few more sales so the picture has something to show
    for i in range(6):
        buy(api, eid, [f"C-{i + 1}-{j}" for j in range(3, 7)])
    buy(api, eid, ["A-4-7", "A-4-8"], pay=False)
    expect(page.locator("#h-sold")).to_have_text("31")
    # the door: one ticket scanned at the north gate
    device = api.post(f"/v1/events/{eid}/devices", json={"gate": "north", "name": "North 1"}, headers=auth(org_key))
    assert device.status_code == 201, device.text
    scan = api.post("/v1/scan", json={"code": first["tickets"][0]["code"]}, headers=auth(device.json()["token"]))
    assert scan.status_code == 200 and scan.json()["result"] == "admitted", scan.text
    expect(page.locator("#door-inside")).to_have_text("1")
    expect(page.locator('#gates tr[data-gate="north"] td').nth(1)).to_have_text("1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True, animations="disabled")

    # the key is in this tab's sessionStorage, in no URL the page requested, and not in localStorage
    assert page.evaluate("sessionStorage.getItem('flashgate.dashboard.key')") == org_key
    assert page.evaluate("localStorage.length") == 0
    assert requests and not [u for u in requests if org_key in u]
    # a reload keeps the tab logged in
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#h-sold")).to_have_text("31")
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("Organisation API key").wait_for()
    assert page.evaluate("sessionStorage.getItem('flashgate.dashboard.key')") is None


def test_a_wrong_key_or_another_organisations_key_is_refused(page: Any, api: httpx.Client, org_key: str,
                                                             live_gateway: str, database_url: str) -> None:
    from tests.browser.conftest import run_async
    from tests.utils.factories import new_org

    event = create_event(api, org_key, seat_spec(sections=1, rows=1, seats=4))
    _, other_key = run_async(new_org(database_url, "Someone Else"))
    door = api.post("/v1/keys", json={"name": "gate 1", "role": "door"}, headers=auth(org_key))
    assert door.status_code == 201, door.text
    page.goto(f"{live_gateway}/dashboard/{event['id']}")
    for key in ("fgk_wrong-key-000000", door.json()["key"], other_key):
        page.get_by_label("Organisation API key").fill(key)
        page.get_by_role("button", name="Show the dashboard").click()
        expect(page.locator("#login-error")).to_be_visible()
        expect(page.locator("#board")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('flashgate.dashboard.key')") is None
    expect(page.locator("#login-error")).to_contain_text("No such event")


def test_reconnects_after_a_gateway_restart(page: Any, api: httpx.Client, org_key: str,
                                            restartable: Restartable) -> None:
    event = create_event(api, org_key, seat_spec(sections=1, rows=3, seats=10))
    eid = event["id"]
    page.goto(f"{restartable.url}/dashboard/{eid}")
    log_in(page, org_key)
    buy(api, eid, ["A-1-1"])
    expect(page.locator("#h-sold")).to_have_text("1")
    restartable.stop()
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    buy(api, eid, ["A-2-1", "A-2-2"])  # through the other gateway while this one is down
    restartable.start()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.locator("#h-sold")).to_have_text("3")
    expect(page.locator('#seatmap rect[data-seat="10"]')).to_have_class("seat s2")
    buy(api, eid, ["A-3-10"])
    expect(page.locator("#h-sold")).to_have_text("4")
    expect(page.locator('#seatmap rect[data-seat="29"]')).to_have_class("seat s2")


def test_a_frozen_gateway_is_noticed_and_left_for_a_live_one(page: Any, api: httpx.Client, org_key: str,
                                                            restartable: Restartable) -> None:
    """A server that stops answering without closing the connection (frozen, or the network gone): the page
    notices the silence (the stream writes at least once a second) and reconnects by itself."""
    event = create_event(api, org_key, seat_spec(sections=1, rows=2, seats=6))
    eid = event["id"]
    page.goto(f"{restartable.url}/dashboard/{eid}")
    log_in(page, org_key)
    assert restartable.proc is not None
    frozen = [restartable.proc.pid] + [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(restartable.proc.pid)], capture_output=True, text=True).stdout.split()]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
        buy(api, eid, ["A-2-6"])  # through the other gateway while this one is frozen
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.locator("#h-sold")).to_have_text("1")
    expect(page.locator('#seatmap rect[data-seat="11"]')).to_have_class("seat s2")
