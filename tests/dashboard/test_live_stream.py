"""`GET /v1/events/{id}/live` over real HTTP against two gateway processes sharing Redis and Postgres:
a sale made through one shows on a stream served by the other, both answer the same figures, and a
stream resumed with Last-Event-ID (on either) gets exactly the seat changes it missed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.dashboard.sse import SSEReader, apply
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import start_gateway

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def gateways(settings, tmp_root, payment_simulator) -> Iterator[tuple[str, str]]:
    """Two gateway processes (one worker each): two workers whose memory is surely not shared."""
    with start_gateway(settings, tmp_root, workers=1) as a, start_gateway(settings, tmp_root, workers=1) as b:
        yield a, b


@pytest.fixture
async def event(gateways, database_url, sim):
    _, key = await new_org(database_url)
    async with httpx.AsyncClient(base_url=gateways[0], timeout=10) as api:
        resp = await api.post("/v1/events", json=seat_spec(sections=2, rows=3, seats=8, ga={"floor": 10}),
                              headers=auth(key))
        assert resp.status_code == 201, resp.text
        ev = resp.json()
        assert (await api.post(f"/v1/events/{ev['id']}/open", headers=auth(key))).status_code == 200
    ev["api_key"] = key
    return ev


@contextlib.asynccontextmanager
async def stream(base: str, event: dict, last_event_id: str | None = None) -> AsyncIterator[SSEReader]:
    headers = auth(event["api_key"])
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=30)) as c:
        async with c.stream("GET", f"/v1/events/{event['id']}/live", headers=headers) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            yield SSEReader(resp)


async def buy(base: str, event_id: int, seats: list[str] | None = None, ga: int = 0, pay: bool = True) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        me = auth((await c.post("/v1/buyer-token")).json()["buyer_token"])
        body = {"seats": seats} if seats else {"ga": {"floor": ga}}
        h = await c.post(f"/v1/events/{event_id}/holds", json=body, headers=me)
        assert h.status_code == 201, h.text
        if not pay:
            return h.json()
        o = await c.post(f"/v1/holds/{h.json()['hold_id']}/checkout", json={},
                         headers={**me, "Idempotency-Key": f"k-{time.monotonic_ns()}"})
        assert o.status_code == 201, o.text
        return o.json()


async def first_state(reader: SSEReader) -> tuple[dict, list[str], dict, str]:
    layout = await reader.next()
    assert layout.event == "layout" and layout.data["seat_view"] is True
    seatmap = await reader.next()
    assert seatmap.event == "seatmap"
    figures = await reader.next()
    assert figures.event == "figures" and figures.id == seatmap.id
    return layout.data, list(seatmap.data["seats"]), figures.data, figures.id


async def test_a_sale_through_one_worker_reaches_a_stream_on_the_other(gateways, event):
    a, b = gateways
    async with stream(a, event) as reader:
        layout, seats, figures, _ = await first_state(reader)
        assert layout["n_seats"] == 48 and [s["name"] for s in layout["sections"]] == ["A", "B"]
        assert figures["totals"]["sold"] == 0 and seats == ["0"] * 48
        started = time.monotonic()
        await buy(b, event["id"], ["B-2-3", "B-2-4"])
        sold = await reader.until(lambda e: e.event == "figures" and e.data["totals"]["sold"] == 2, timeout=5)
        assert time.monotonic() - started < 3
        assert sold.data["revenue"]["gross_minor"] == 2 * 5000
        # B-2-3 is seat index 24 + 8 + 2 = 34
        await buy(b, event["id"], ga=3)
        f = await reader.until(lambda e: e.event == "figures" and e.data["totals"]["sold"] == 5, timeout=5)
        assert f.data["ga"][0]["sold"] == 3 and f.data["funnel"]["paid"] == 2
    # both workers answer the same figures
    async with httpx.AsyncClient(timeout=10) as c:
        fa, fb = [(await c.get(f"{base}/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))).json()
                  for base in (a, b)]
    for f in (fa, fb):
        f.pop("now_ms")
        f["queue"].pop("now_ms")
        f["providers"]["payments"].pop("pacing")  # each worker publishes its own limiter every second
    assert fa == fb and fa["totals"]["sold"] == 5


async def test_seat_changes_arrive_in_order_on_the_stream(gateways, event):
    a, b = gateways
    async with stream(a, event) as reader:
        _, seats, _, _ = await first_state(reader)
        await buy(b, event["id"], ["A-1-1", "A-1-2"])
        held = await buy(b, event["id"], ["A-2-1"], pay=False)
        async with httpx.AsyncClient(base_url=b, timeout=10) as c:
            resp = await c.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))
            target = resp.json()["last_change_id"]

        def caught_up(e):
            if e.event == "seats":
                apply(seats, e.data["changes"])
            return e.id is not None and tuple(map(int, e.id.split("-"))) >= tuple(map(int, target.split("-")))

        await reader.until(caught_up, timeout=5)
        assert seats[0] == seats[1] == "2" and seats[8] == "1" and seats.count("0") == 45
        assert held["seats"] == ["A-2-1"]


async def test_resume_with_last_event_id_on_the_other_worker(gateways, event):
    a, b = gateways
    async with stream(a, event) as reader:
        _, seats, _, last_id = await first_state(reader)
    # while disconnected: two sales and a hold
    await buy(a, event["id"], ["B-1-1"])
    await buy(b, event["id"], ["B-1-2", "B-1-3"])
    await buy(a, event["id"], ["A-3-8"], pay=False)
    async with stream(b, event, last_event_id=last_id) as reader:
        layout = await reader.next()
        assert layout.event == "layout"
        missed = await reader.next()
        assert missed.event == "seats", "a resumed stream gets the changes, not the whole map"
        ops = [op for op, _ in missed.data["changes"]]
        assert ops == [1, 3, 1, 3, 1]  # hold, sell, hold, sell, hold: in order, nothing else
        apply(seats, missed.data["changes"])
        figures = await reader.next()
        assert figures.event == "figures" and figures.id == missed.id and figures.data["totals"]["sold"] == 3
    async with stream(a, event) as fresh:
        _, now, _, _ = await first_state(fresh)
    assert seats == now
    # an id the stream no longer holds (or never did): the whole seat map again
    async with stream(a, event, last_event_id="1-0") as reader:
        assert (await reader.next()).event == "layout"
        again = await reader.next()
        assert again.event == "seatmap" and list(again.data["seats"]) == now


async def test_quiet_stream_still_refreshes_figures(gateways, event):
    async with stream(gateways[0], event) as reader:
        await first_state(reader)
        tick = await reader.next(timeout=3)  # queue and providers move without sales: about once a second
        assert tick.event == "figures"


async def test_many_streams_one_sale(gateways, event):
    """Forty open streams over both workers all see the same sale."""
    async with contextlib.AsyncExitStack() as stack:
        readers = [await stack.enter_async_context(stream(gateways[i % 2], event)) for i in range(40)]
        for r in readers:
            await first_state(r)
        await buy(gateways[1], event["id"], ["A-1-5"])
        got = await asyncio.gather(*(r.until(lambda e: e.event == "figures" and e.data["totals"]["sold"] == 1,
                                             timeout=5) for r in readers))
        assert len({g.id for g in got}) == 1
