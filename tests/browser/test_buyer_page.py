"""The buyer page (`/buy/{event_id}`) in real headless Chromium against a live gateway:
seats, hold with countdown, a declined then a paid checkout, tickets with QR codes,
quantities and best available, a payment outage, and the waiting room."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails in CI) with the reason
    expect = None

from gateway.orders.tickets import order_id_for
from tests.browser.conftest import create_event, shot
from tests.utils.factories import auth, seat_spec
from tests.utils.live import start_worker

pytestmark = pytest.mark.browser

TIMER = re.compile(r"^\d+:\d\d$")


def seconds(timer: str) -> int:
    m, s = timer.split(":")
    return int(m) * 60 + int(s)


def stored(page: Any, name: str, event_id: int) -> Any:
    return page.evaluate("([k]) => JSON.parse(localStorage.getItem(k))", [f"flashgate.event.{event_id}.{name}"])


def held_within(api: httpx.Client, event_id: int, held: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if api.get(f"/v1/events/{event_id}/availability").json()["ga"][0]["held"] == held:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def seat(page: Any, label: str) -> Any:
    return page.locator(f'.seat[data-label="{label}"]')


# -- without a browser ---------------------------------------------------------------------------------------


@pytest.mark.browser
def test_public_event_and_page_are_served(api: httpx.Client, org_key: str) -> None:
    spec = seat_spec(sections=1, rows=2, seats=3, ga={"floor": 10})
    spec["venue"] = "Main Hall"
    event = create_event(api, org_key, spec)
    body = api.get(f"/v1/events/{event['id']}/public").json()
    assert body["name"] == "Test Night" and body["venue"] == "Main Hall" and body["status"] == "on_sale"
    assert body["queue"] == {"enabled": False} and body["currency"] == "EUR" and body["n_seats"] == 6
    assert body["sections"] == [{"name": "A", "rows": [
        {"label": "1", "first_index": 0, "seats": ["1", "2", "3"], "price_minor": 5000},
        {"label": "2", "first_index": 3, "seats": ["1", "2", "3"], "price_minor": 5000}]}]
    assert body["ga"] == [{"code": "floor", "name": "Floor", "capacity": 10, "price_minor": 2500}]
    assert body["prices"] == [{"price_minor": 5000, "seats": 6}]
    missing = api.get("/v1/events/999999999/public")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "event_not_found"
    draft = create_event(api, org_key, seat_spec(sections=1, rows=1, seats=2), open_=False)
    assert api.get(f"/v1/events/{draft['id']}/public").status_code == 404  # not on sale: nothing public yet
    page = api.get(f"/buy/{event['id']}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/buy/static/buyer.js\"" in page.text and "http" not in page.text.split("<body>")[0]
    for name, media in (("buyer.js", "text/javascript"), ("buyer.css", "text/css")):
        asset = api.get(f"/buy/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    assert api.get("/buy/static/..%2Fapi%2Fapp.py").status_code == 404
    assert api.get("/buy/static/buyer.html").status_code == 404


# -- in the browser -------------------------------------------------------------------------------------------


def test_choose_seats_hold_decline_then_pay(page: Any, api: httpx.Client, org_key: str, live_gateway: str) -> None:
    event = create_event(api, org_key, seat_spec(sections=2, rows=4, seats=12, ttl=300, name="Harbour Lights"))
    eid = event["id"]
    page.goto(f"{live_gateway}/buy/{eid}")
    page.get_by_role("heading", name="Harbour Lights").wait_for()
    seat(page, "A-1-5").wait_for()
    assert page.locator(".seat").count() == 96
    buyer_id = page.locator("#who").inner_text()
    assert buyer_id.startswith("b_")

    # Someone else holds a seat: the page greys it out within a refresh or two.
    other = api.post("/v1/buyer-token").json()["buyer_token"]
    resp = api.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-8", "A-1-9"]}, headers=auth(other))
    assert resp.status_code == 201, resp.text
    expect(seat(page, "A-1-8")).to_be_disabled()
    assert seat(page, "A-1-9").is_disabled() and "held" in (seat(page, "A-1-9").get_attribute("class") or "")
    shot(page, "1-seats")

    seat(page, "A-1-5").click()
    seat(page, "A-1-6").click()
    assert seat(page, "A-1-5").get_attribute("aria-pressed") == "true"
    assert "2 seats" in page.locator("#sel-summary").inner_text()
    page.locator("#selbar").scroll_into_view_if_needed()
    shot(page, "2-selected")
    page.get_by_role("button", name="Hold 2 seats").click()

    page.locator("#step-hold").wait_for()
    timer = page.locator("#countdown")
    first = timer.inner_text()
    assert TIMER.match(first) and 290 <= seconds(first) <= 300
    assert page.locator("#hold-total").inner_text().replace("\u00a0", "").endswith("100.00")
    page.reload()  # a refresh keeps identity and the hold
    page.locator("#step-hold").wait_for()
    assert page.locator("#who").inner_text() == buyer_id
    expect(timer).not_to_have_text(first, timeout=3000)
    assert seconds(timer.inner_text()) < seconds(first)
    page.get_by_label("E-mail for your tickets").fill("ada@example.com")
    shot(page, "3-hold", full_page=True)

    page.get_by_label("Test decline card").check()
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    notice = page.get_by_role("alert")
    notice.wait_for()
    assert "declined" in notice.inner_text()
    assert page.locator("#step-hold").is_visible()  # the hold is kept: the buyer may try again
    shot(page, "4-declined", full_page=True)

    page.get_by_label("Test card").check()
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    page.locator("#step-tickets").wait_for()
    page.locator(".ticket").nth(1).wait_for()
    order = stored(page, "order", eid)
    resp = api.get(f"/v1/orders/{order['order_id']}", headers=auth(order["order_token"]))
    assert resp.status_code == 200, resp.text
    api_codes = sorted(t["code"] for t in resp.json()["tickets"])
    assert sorted(t["seat"] for t in resp.json()["tickets"]) == ["A-1-5", "A-1-6"]
    shown = sorted(page.locator(".ticket").evaluate_all("els => els.map(e => e.dataset.code)"))
    assert shown == api_codes
    assert sorted(page.locator(".ticket code").all_inner_texts()) == api_codes
    frame = page.frame_locator("#order-frame")
    frame.locator("figure.ticket svg").nth(1).wait_for()
    assert frame.locator("figure.ticket svg").count() == 2
    assert frame.locator("figure.ticket svg path").count() >= 2  # segno draws the modules as paths
    assert sorted(frame.locator("figure.ticket code").all_inner_texts()) == api_codes
    page.wait_for_function("() => document.getElementById('order-frame').getBoundingClientRect().height > 400")
    shot(page, "5-tickets", full_page=True)

    # Sold for everyone; the second seat of the other buyer's hold is untouched.
    avail = api.get(f"/v1/events/{eid}/availability").json()
    assert avail["seats"][4:9] == "22011"


def test_quantities_best_available_release_and_payment_outage(page: Any, api: httpx.Client, org_key: str,
                                                              live_gateway: str, sim: httpx.Client) -> None:
    event = create_event(api, org_key, seat_spec(sections=2, rows=3, seats=8, ga={"floor": 5}, limit=6))
    eid = event["id"]
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(f"{live_gateway}/buy/{eid}")
    page.locator("[data-ga-left='floor']").filter(has_text="5 left").wait_for()
    shot(page, "desktop", full_page=True)

    # Quantity picker: + three times, - once; the hold counts two standing tickets.
    plus = page.get_by_role("button", name="One ticket more: Floor")
    for _ in range(3):
        plus.click()
    page.get_by_role("button", name="One ticket fewer: Floor").click()
    page.get_by_role("button", name=re.compile(r"Hold 2 × Floor")).click()
    page.locator("#step-hold").wait_for()
    assert "2 × Floor" in page.locator("#hold-items").inner_text()
    hold = stored(page, "hold", eid)["hold"]
    assert hold["ga"] == {"floor": 2}
    page.get_by_role("button", name="Release these tickets").click()
    page.locator("#step-choose").wait_for()
    page.locator("[data-ga-left='floor']").filter(has_text="5 left").wait_for()
    assert held_within(api, eid, 0, 3.0)  # any worker's snapshot follows Redis within a refresh

    # Best available: three seats together in section B, front row first.
    page.get_by_label("Section", exact=True).select_option("B")
    page.get_by_label("Seats together").fill("3")
    page.get_by_role("button", name="Find best seats").click()
    page.locator("#step-hold").wait_for()
    hold = stored(page, "hold", eid)["hold"]
    seats, hold_id = hold["seats"], hold["hold_id"]
    assert len(seats) == 3 and all(s.startswith("B-1-") for s in seats)

    # The payment provider is down: the page says when to try again and keeps the hold and the attempt.
    sim.put("/_config", json={"down": True}).raise_for_status()
    page.get_by_label("E-mail for your tickets").fill("grace@example.com")
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    notice = page.get_by_role("alert")
    notice.filter(has_text="Try again in").wait_for()
    assert re.search(r"Try again in \d+ s", notice.inner_text())
    assert page.locator("#pay-btn").is_disabled()
    key = stored(page, "hold", eid)["attempt"]["key"]
    shot(page, "6-payments-unavailable")
    sim.put("/_config", json={"down": False}).raise_for_status()
    page.locator("#pay-btn:enabled").wait_for(timeout=15_000)
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    page.locator("#step-tickets").wait_for(timeout=15_000)
    page.locator(".ticket").nth(2).wait_for()
    # The retry reused the attempt's key (the order id is derived from hold, buyer and key).
    buyer = page.evaluate("JSON.parse(localStorage.getItem('flashgate.buyer')).buyer_id")
    assert stored(page, "order", eid)["order_id"] == order_id_for(eid, hold_id, buyer, key)


def test_waiting_room_then_admitted(page: Any, api: httpx.Client, org_key: str, live_gateway: str, settings,
                                    tmp_root) -> None:
    spec = seat_spec(sections=1, rows=3, seats=10, queue=True, name="Queue Night")
    event = create_event(api, org_key, spec)
    eid = event["id"]
    # Two buyers ahead of us, so the page has a position to show before the admission leader starts.
    for _ in range(2):
        token = api.post("/v1/buyer-token").json()["buyer_token"]
        assert api.post(f"/v1/events/{eid}/queue", headers=auth(token)).status_code in (200, 201)
    page.goto(f"{live_gateway}/buy/{eid}")
    page.locator("#step-queue").wait_for()
    position = page.locator("#queue-position")
    expect(position).to_have_text(re.compile(r"^[0-9]+$"))
    assert int(position.inner_text()) == 3
    assert page.locator("#step-label-queue").is_visible()
    shot(page, "0-queue")
    started = time.monotonic()
    with start_worker(settings, "admission", tmp_root):
        page.locator("#step-choose").wait_for(timeout=20_000)
    assert time.monotonic() - started < 20
    admission = stored(page, "admission", eid)
    assert admission["token"].startswith("a.")
    seat(page, "A-2-4").click()
    page.get_by_role("button", name="Hold 1 seat").click()
    page.locator("#step-hold").wait_for()  # the hold carried the admission token
    assert stored(page, "hold", eid)["hold"]["seats"] == ["A-2-4"]


def test_phone_layout(page: Any, api: httpx.Client, org_key: str, live_gateway: str) -> None:
    event = create_event(api, org_key, seat_spec(sections=1, rows=6, seats=20, ga={"floor": 50}, name="Pocket Gig"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_gateway}/buy/{event['id']}")
    seat(page, "A-1-1").wait_for()
    seat(page, "A-1-3").click()
    # Nothing is wider than the phone but the seat rows, which scroll inside their box.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    box = page.get_by_role("button", name="Hold 1 seat").bounding_box()
    assert box and box["height"] >= 44
    shot(page, "7-phone")


def test_prequeue_before_the_sale_opens(page: Any, api: httpx.Client, org_key: str, live_gateway: str) -> None:
    event = create_event(api, org_key, seat_spec(sections=1, rows=2, seats=6, queue=True, name="Early Birds"),
                         open_=False)
    eid = event["id"]
    assert api.get(f"/v1/events/{eid}/public").status_code == 404  # a draft is not public
    resp = api.patch(f"/v1/events/{eid}/admission", json={"prequeue": True}, headers=auth(org_key))
    assert resp.status_code == 200, resp.text
    public = api.get(f"/v1/events/{eid}/public").json()
    assert public["status"] == "draft" and public["queue"] == {"enabled": True, "prequeue": True}
    assert public["sections"][0]["rows"][1]["first_index"] == 6
    page.goto(f"{live_gateway}/buy/{eid}")
    expect(page.locator("#queue-title")).to_have_text("The sale has not started yet")
    shot(page, "0-prequeue")
    resp = api.post(f"/v1/events/{eid}/open", headers=auth(org_key))
    assert resp.status_code == 200, resp.text
    # At opening the pre-queue is shuffled into places; no admission leader runs here, so we wait in line.
    expect(page.locator("#queue-position")).to_have_text("1", timeout=10_000)
    assert page.locator("#queue-title").inner_text() == "You are in the waiting room"
