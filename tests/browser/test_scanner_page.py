"""The door scanner page (`/scan`) in real headless Chromium against a live gateway, with manual entry
(the way a person or a keyboard-wedge scanner types a code): online answers, the phone losing its
network (answers checked on the phone: signature, seen-set, sealed seat and holder; scans queued in
IndexedDB), the network back (queue uploaded, a ticket another gate let in first flagged)."""

from __future__ import annotations

import base64
import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails in CI) with the reason
    expect = None

from tests.utils.door import open_door
from tests.utils.live import start_worker

pytestmark = pytest.mark.browser


def forged(code: str) -> str:
    raw = bytearray(base64.b32decode(code))
    raw[30] ^= 0x10
    return base64.b32encode(bytes(raw)).decode()


def enter(page: Any, code: str) -> None:
    page.locator("#code-input").fill(code)
    page.locator("#code-input").press("Enter")


def answer(page: Any, word: str, seat: str = "", holder: str = "") -> None:
    expect(page.locator("#answer-word")).to_have_text(word)
    expect(page.locator("#answer-seat")).to_have_text(seat)
    expect(page.locator("#answer-holder")).to_have_text(holder)


def queued(page: Any) -> list[dict[str, Any]]:
    """The offline queue as the page stored it in IndexedDB."""
    return page.evaluate("""async () => {
        const names = (await indexedDB.databases()).map((d) => d.name).filter((n) => n.startsWith('flashgate-scanner-'));
        const db = await new Promise((ok, fail) => { const r = indexedDB.open(names[0]); r.onsuccess = () => ok(r.result);
                                                     r.onerror = () => fail(r.error); });
        return await new Promise((ok) => { const r = db.transaction('queue').objectStore('queue').getAll();
                                           r.onsuccess = () => ok(r.result); });
    }""")


@pytest.mark.browser
def test_the_page_and_its_assets_are_served(api: httpx.Client) -> None:
    page = api.get("/scan")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["permissions-policy"] == "camera=(self)"
    assert '<script src="/scan/static/scanner.js"' in page.text and "http" not in page.text.split("<body>")[0]
    for name, media in (("scanner.js", "text/javascript"), ("scanner.css", "text/css")):
        asset = api.get(f"/scan/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    worker = api.get("/scan/sw.js")
    assert worker.status_code == 200 and worker.headers["content-type"].startswith("text/javascript")
    assert worker.headers["service-worker-allowed"] == "/scan"
    for missing in ("scanner.html", "scanner-sw.js", "buyer.js", "..%2Fapi%2Fapp.py"):
        resp = api.get(f"/scan/static/{missing}")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_scan_online_offline_and_back(page: Any, live_gateway: str, database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    t1, t2, t3, t4, floor1, _ = door.tickets
    phone, south = door.device("gate-phone"), door.device("south")
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))

    page.goto(f"{live_gateway}/scan#token={phone['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    expect(page.locator("#where")).to_have_text("Door Night · gate gate-phone")
    assert "#" not in page.url  # the token does not stay in the address bar
    if not page.evaluate("'BarcodeDetector' in window"):  # desktop Linux Chromium has none
        expect(page.locator("#camera-note")).to_contain_text("no built-in barcode reader")
        expect(page.locator("#camera")).to_be_hidden()
    expect(page.locator("#code-input")).to_be_focused()  # a wedge scanner can type at once

    # Online: the gateway answers.
    enter(page, t1["code"])
    answer(page, "ADMIT", "A-1-1", "ada@example.org")
    expect(page.locator("#answer")).to_have_attribute("data-result", "admitted")
    enter(page, t1["code"].lower())
    answer(page, "DUPLICATE", "A-1-1", "ada@example.org")
    expect(page.locator("#answer-note")).to_contain_text("at gate gate-phone")
    enter(page, forged(t2["code"]))
    answer(page, "INVALID")
    expect(page.locator("#answer-note")).to_have_text("bad_signature")
    expect(page.locator("#count-admitted")).to_have_text("1")
    expect(page.locator("#count-duplicate")).to_have_text("1")
    expect(page.locator("#count-refused")).to_have_text("1")

    # Another gate lets ticket 4 in; then the phone loses its network.
    assert door.scan(south["token"], t4["code"])["result"] == "admitted"
    page.context.set_offline(True)
    expect(page.locator("#mode")).to_have_text(re.compile(r"^OFFLINE"))
    enter(page, t2["code"])
    answer(page, "ADMIT", "A-1-2", "ada@example.org")  # opened from the manifest with the scanned code
    expect(page.locator("#answer-note")).to_contain_text("offline")
    enter(page, t1["code"])  # let in online before: the phone remembers
    answer(page, "DUPLICATE", "A-1-1", "ada@example.org")
    enter(page, floor1["code"])
    answer(page, "ADMIT", "GA floor", "alan@example.org")
    enter(page, t4["code"])  # unknown here that south let it in: admitted for now
    answer(page, "ADMIT", "A-1-4", "grace@example.org")
    enter(page, forged(t3["code"]))
    answer(page, "INVALID")
    enter(page, "not a ticket")
    answer(page, "INVALID")
    expect(page.locator("#mode")).to_have_text("OFFLINE · 4 waiting")
    expect(page.locator("#count-waiting")).to_have_text("4")
    stored = queued(page)
    assert sorted(s["local_result"] for s in stored) == ["admitted", "admitted", "admitted", "duplicate"]
    assert all(not s.get("server_result") for s in stored)

    # The network is back: the queue goes up by itself and the gateway's answers are shown.
    page.context.set_offline(False)
    expect(page.locator("#sync-summary")).to_have_text(
        "4 offline scan(s) uploaded: 3 confirmed, 1 changed by the gateway.", timeout=20_000)
    expect(page.locator("#sync-changes li")).to_have_text(re.compile(
        r"A-1-4: ADMIT here → DUPLICATE \(first at gate south\)"))
    expect(page.locator("#mode")).to_have_text("ONLINE")
    expect(page.locator("#count-waiting")).to_have_text("0")
    assert all(s.get("server_result") for s in queued(page))
    # The gateway knows what the phone decided offline.
    assert door.scan(south["token"], t2["code"])["first_scan"]["gate"] == "gate-phone"

    enter(page, t3["code"])
    answer(page, "ADMIT", "A-1-3", "grace@example.org")
    assert hosts == {urlsplit(live_gateway).netloc}  # nothing loaded from anywhere else


def test_setup_with_a_pasted_token(page: Any, live_gateway: str, database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("side")
    page.goto(f"{live_gateway}/scan")
    expect(page.locator("#setup")).to_be_visible()
    expect(page.locator("#mode")).to_have_text("NOT SET UP")
    page.locator("#token-input").fill("d.not-a-real-token")
    page.locator("#token-input").press("Enter")
    expect(page.locator("#setup-error")).to_be_visible()
    expect(page.locator("#setup-error")).to_contain_text("Check the token")
    page.locator("#token-input").fill(device["token"])
    page.locator("#token-input").press("Enter")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    enter(page, door.tickets[0]["code"])
    answer(page, "ADMIT", "A-1-1", "ada@example.org")
    page.reload()  # the token is kept on the phone
    expect(page.locator("#mode")).to_have_text("ONLINE")
    enter(page, door.tickets[0]["code"])
    answer(page, "DUPLICATE", "A-1-1", "ada@example.org")


def test_first_start_without_the_scanning_api(page: Any, live_gateway: str, database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("first")
    page.route("**/v1/scan/manifest*", lambda route: route.abort())
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#setup-error")).to_have_text(re.compile(r"cannot be reached and this phone has no manifest"))
    expect(page.locator("#scanner")).to_be_hidden()
    page.unroute("**/v1/scan/manifest*")
    page.locator("#token-input").fill(device["token"])
    page.locator("#token-input").press("Enter")
    expect(page.locator("#mode")).to_have_text("ONLINE")


def test_a_revoked_device_is_refused(page: Any, live_gateway: str, database_url: str, api: httpx.Client) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("back")
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    resp = api.delete(f"/v1/events/{door.event_id}/devices/{device['device_id']}",
                      headers={"Authorization": f"Bearer {door.key}"})
    assert resp.status_code == 200, resp.text
    enter(page, door.tickets[0]["code"])
    answer(page, "REFUSED")
    expect(page.locator("#answer-note")).to_contain_text("device_revoked")
    page.context.set_offline(True)  # a revoked phone does not let anyone in offline either
    enter(page, door.tickets[1]["code"])
    answer(page, "REFUSED")


def test_the_queue_and_seen_set_survive_a_reload(page: Any, live_gateway: str, database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("reload")
    t1, t2 = door.tickets[0], door.tickets[1]
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    page.context.set_offline(True)
    expect(page.locator("#mode")).to_have_text(re.compile(r"^OFFLINE"))
    enter(page, t1["code"])
    answer(page, "ADMIT", "A-1-1", "ada@example.org")
    # The page loads again, but the scanning API stays out of reach (a proxy in the way): the page
    # works from what it stored: the manifest, the seen-set and the queue.
    for route in ("**/v1/scan/manifest*", "**/v1/scan/batch", "**/v1/scan"):
        page.route(route, lambda route: route.abort())
    page.context.set_offline(False)
    page.reload()
    expect(page.locator("#mode")).to_have_text("OFFLINE · 1 waiting")
    expect(page.locator("#where")).to_have_text("Door Night · gate reload")
    enter(page, t1["code"])  # the seen-set came back with the page
    answer(page, "DUPLICATE", "A-1-1", "ada@example.org")
    enter(page, t2["code"])  # the stored manifest still opens seat and holder
    answer(page, "ADMIT", "A-1-2", "ada@example.org")
    for route in ("**/v1/scan/manifest*", "**/v1/scan/batch", "**/v1/scan"):
        page.unroute(route)
    expect(page.locator("#sync-summary")).to_have_text(
        "3 offline scan(s) uploaded: 3 confirmed, 0 changed by the gateway.", timeout=20_000)
    expect(page.locator("#mode")).to_have_text("ONLINE")
    enter(page, t2["code"])
    answer(page, "DUPLICATE", "A-1-2", "ada@example.org")


def test_offline_refusals(page: Any, live_gateway: str, database_url: str, settings: Any, tmp_path: Any) -> None:
    """Offline, the phone refuses a refunded ticket (from the manifest's revocations), another event's
    ticket and a forged code by itself; only the scan of this event's genuine ticket is queued."""
    door, other = open_door(live_gateway, database_url), open_door(live_gateway, database_url)
    device = door.device("refusals")
    refunded = door.tickets[4]
    with start_worker(settings, "ledger", tmp_path):  # the paid order reaches Postgres, then the refund
        deadline = time.monotonic() + 20
        while True:
            resp = httpx.post(f"{live_gateway}/v1/orders/{refunded['order_id']}/refund",
                              headers={"Authorization": f"Bearer {door.key}"}, timeout=15)
            if resp.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert resp.status_code == 200, resp.text
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    page.context.set_offline(True)
    expect(page.locator("#mode")).to_have_text(re.compile(r"^OFFLINE"))
    enter(page, refunded["code"])
    answer(page, "VOID")
    expect(page.locator("#answer")).to_have_attribute("data-result", "void")
    enter(page, other.tickets[0]["code"])
    answer(page, "WRONG EVENT")
    enter(page, forged(door.tickets[0]["code"]))
    answer(page, "INVALID")
    expect(page.locator("#answer-note")).to_contain_text("bad_signature")
    expect(page.locator("#count-refused")).to_have_text("3")
    assert [s["local_result"] for s in queued(page)] == ["void"]


def test_the_page_loads_without_a_network_after_a_first_visit(page: Any, live_gateway: str,
                                                             database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("no-network")
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    deadline = time.monotonic() + 15
    while page.evaluate("""async () => {
        const reg = await navigator.serviceWorker.getRegistration('/scan');
        if (!reg || !reg.active) return 0;  // (never wait on serviceWorker.ready: no registration, no end)
        return (await (await caches.open('flashgate-scanner-v1')).keys()).length; }""") < 3:
        assert time.monotonic() < deadline, "the service worker never stored the page"
        page.wait_for_timeout(100)
    page.context.set_offline(True)
    page.reload()  # no network at all: the service worker answers with the stored page
    expect(page.locator("#mode")).to_have_text("OFFLINE · 0 waiting")
    enter(page, door.tickets[0]["code"])
    answer(page, "ADMIT", "A-1-1", "ada@example.org")
    expect(page.locator("#answer-note")).to_contain_text("offline")
    page.context.set_offline(False)
    expect(page.locator("#sync-summary")).to_have_text(
        "1 offline scan(s) uploaded: 1 confirmed, 0 changed by the gateway.", timeout=20_000)


# A stand-in for the browser's barcode reader: headless Linux Chromium has no BarcodeDetector and no
# camera, so the test supplies both (a canvas stream as the camera, a detector that "sees" whatever
# code the test holds up). What is tested is the page's own camera loop around them.
CAMERA = """
window.__held = null;
window.BarcodeDetector = class {
  constructor(opts) { window.__formats = opts.formats; }
  async detect(video) { return window.__held && video.srcObject ? [{ rawValue: window.__held }] : []; }
};
navigator.mediaDevices.getUserMedia = async () => {
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 64;
  canvas.getContext('2d').fillRect(0, 0, 64, 64);
  return canvas.captureStream(5);
};
"""


def test_camera_reads_a_code_once_while_it_is_held(page: Any, live_gateway: str, database_url: str) -> None:
    door = open_door(live_gateway, database_url)
    device = door.device("camera")
    t1, t2 = door.tickets[0], door.tickets[1]
    page.add_init_script(CAMERA)
    page.goto(f"{live_gateway}/scan#token={device['token']}")
    expect(page.locator("#mode")).to_have_text("ONLINE")
    expect(page.locator("#camera-note")).to_be_hidden()
    page.get_by_role("button", name="Start camera").click()
    expect(page.locator("#camera-btn")).to_be_hidden()
    assert page.evaluate("window.__formats") == ["qr_code"]

    page.evaluate("([c]) => { window.__held = c; }", [t1["code"].lower()])
    answer(page, "ADMIT", "A-1-1", "ada@example.org")
    page.wait_for_timeout(1500)  # still in front of the camera: not read again
    expect(page.locator("#count-admitted")).to_have_text("1")
    expect(page.locator("#count-duplicate")).to_have_text("0")
    page.evaluate("([c]) => { window.__held = c; }", [t2["code"]])
    answer(page, "ADMIT", "A-1-2", "ada@example.org")
    page.evaluate("() => { window.__held = null; }")
    page.wait_for_timeout(3300)  # out of view long enough: shown again, it is a new scan
    page.evaluate("([c]) => { window.__held = c; }", [t1["code"]])
    answer(page, "DUPLICATE", "A-1-1", "ada@example.org")
    expect(page.locator("#count-admitted")).to_have_text("2")
    expect(page.locator("#count-duplicate")).to_have_text("1")
