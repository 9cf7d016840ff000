"""The stream's bounds, driven through the worker's own stream service (real Redis, sales through the API):
a client that falls too far behind is sent the whole state instead of a backlog, and a resume that
missed more changes than the replay bound gets the whole seat map."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.organisers.live_feed import LiveStreams
from tests.dashboard.sse import apply
from tests.utils.factories import auth, buyer, new_org, open_event, seat_spec

pytestmark = pytest.mark.anyio


def events(raw: bytes) -> list[tuple[str, str | None, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
    return out


@pytest.fixture
async def event(client, database_url, sim):
    org, key = await new_org(database_url)
    ev = await open_event(client, key, seat_spec(sections=1, rows=4, seats=10))
    ev["api_key"], ev["org"] = key, org
    return ev


async def hold(client, event_id, seat):
    me = await buyer(client)
    resp = await client.post(f"/v1/events/{event_id}/holds", json={"seats": [seat]}, headers=me)
    assert resp.status_code == 201, resp.text


async def test_a_client_too_far_behind_gets_the_whole_state_once(client, app, event):
    streams = LiveStreams(app.gateway.live, min_gap_s=0.0, queue_max=3)
    stream = await streams.open(event["org"], event["id"], None)
    first = events(await stream.__anext__())
    assert [e[0] for e in first] == ["layout", "seatmap", "figures"]
    try:
        for i in range(8):  # eight broadcasts while this client reads nothing
            await hold(client, event["id"], f"A-1-{i + 1}")
            await asyncio.sleep(0.05)
        got = events(await asyncio.wait_for(stream.__anext__(), 5))
        kinds = [e[0] for e in got]
        assert kinds[:3] == ["layout", "seatmap", "figures"], kinds  # the whole state, not eight messages
        seats = list(got[1][2]["seats"])
        for kind, _, data in got[3:]:
            if kind == "seats":
                apply(seats, data["changes"])
        assert seats[:8] == ["1"] * 8
    finally:
        await stream.aclose()
        await streams.stop()


async def test_a_resume_beyond_the_replay_bound_gets_the_seat_map(client, app, event):
    streams = LiveStreams(app.gateway.live, resume_max=3)
    stream = await streams.open(event["org"], event["id"], None)
    last = events(await stream.__anext__())[-1][1]
    await stream.aclose()
    for i in range(3):
        await hold(client, event["id"], f"A-2-{i + 1}")
    near = await streams.open(event["org"], event["id"], last)
    assert [e[0] for e in events(await near.__anext__())] == ["layout", "seats", "figures"]  # 3 missed: replayed
    await near.aclose()
    await hold(client, event["id"], "A-2-4")
    far = await streams.open(event["org"], event["id"], last)
    got = events(await far.__anext__())
    assert [e[0] for e in got] == ["layout", "seatmap", "figures"]  # 4 missed: the whole map
    assert got[1][2]["seats"][10:14] == "1111"
    await far.aclose()
    await streams.stop()
    resp = await client.get(f"/v1/events/{event['id']}/stats", headers=auth(event["api_key"]))
    assert resp.json()["totals"]["held"] == 4
