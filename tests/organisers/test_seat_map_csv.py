"""Seat maps from CSV (`section,row,seat,tier`): API, CLI, errors naming line and column, the maximum."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.organisers import seatmap_csv
from gateway.organisers.event_spec import MAX_SEATS
from tests.organisers.conftest import app_client
from tests.utils.factories import auth, buyer, new_org, seat_spec
from tests.utils.live import stack_env

pytestmark = pytest.mark.anyio
TIERS = {"front": 8000, "back": 4000}
MAP = """section,row,seat,tier
Stalls,A,1,front
Stalls,A,2,front
Stalls,A,3,back
Stalls,B,1,back
Balcony,1,101,back
"""


def test_csv_becomes_sections_rows_and_seats_in_file_order():
    sections = seatmap_csv.parse("tier,seat,row,section\r\nfront,1,A,S\r\n\r\nback,2,A,S\r\nback,1,B,T\r\n",
                                 price_tiers=TIERS)
    assert sections == [
        {"name": "S", "rows": [{"label": "A", "seats": ["1", "2"], "price_tier": "front",
                                "seat_price_tiers": ["front", "back"]}]},
        {"name": "T", "rows": [{"label": "B", "seats": ["1"], "price_tier": "back"}]},
    ]
    assert seatmap_csv.parse("\ufeff" + MAP, price_tiers=TIERS)[0]["rows"][0]["seats"] == ["1", "2", "3"]
    quoted = seatmap_csv.parse('section,row,seat,tier\n"Upper Circle","A","1",back\n', price_tiers=TIERS)
    assert quoted[0]["name"] == "Upper Circle"


@pytest.mark.parametrize("text, line, column, words", [
    ("", 1, None, "empty"),
    ("section,row,seat\nA,1,1\n", 1, None, "section,row,seat,tier"),
    ("section,row,seat,tier,price\n", 1, None, "found"),
    ("section,row,seat,tier\n", 1, None, "no seats"),
    ("section,row,seat,tier\nA,1,1,front\nA,1\n", 3, None, "expected 4 values, found 2"),
    ("section,row,seat,tier\nA,1,1,front\nA,1,2,gold\n", 3, "tier", "unknown price tier 'gold'"),
    ("section,row,seat,tier\nA,1,1,front\nA,1,2,front\n\nA,1,1,back\n", 5, "seat", "already appears on line 2"),
    ("section,row,seat,tier\n!A,1,1,front\n", 2, "section", "'!A' is not valid"),
    ("section,row,seat,tier\nA,,1,front\n", 2, "row", "'' is not valid"),
    ("section,row,seat,tier\nA,1,1,FRONT\n", 2, "tier", "not valid"),
    ("section,row,seat,tier\nA,1,\"1,front\n", 2, None, "expected 4 values"),
])
def test_errors_name_the_line_and_column(text, line, column, words):
    with pytest.raises(seatmap_csv.SeatMapError) as caught:
        seatmap_csv.parse(text, price_tiers=TIERS)
    err = caught.value
    assert err.status == 422 and err.code == "invalid_seat_map"
    assert err.details == {"line": line, "column": column}, err.message
    assert f"line {line}" in err.message and words in err.message
    if column:
        assert f"column {column}" in err.message


def test_text_that_is_not_utf8_is_refused_with_its_line():
    with pytest.raises(seatmap_csv.SeatMapError) as caught:
        seatmap_csv.decode(b"section,row,seat,tier\nA,1,1,front\nA,1,\xff,front\n")
    assert caught.value.details["line"] == 3


async def _draft(client, key: str) -> dict:
    spec = {**seat_spec(sections=1, rows=1, seats=2, ga={"floor": 5}), "price_tiers": TIERS}
    spec["sections"][0]["rows"][0]["price_tier"] = "front"
    resp = await client.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_import_replaces_a_drafts_seat_map(client, database_url, pg):
    _, key = await new_org(database_url)
    event = await _draft(client, key)
    resp = await client.put(f"/v1/events/{event['id']}/seat-map", content=MAP,
                            headers={**auth(key), "Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    view = resp.json()
    assert [(s["name"], s["rows"], s["seats"]) for s in view["sections"]] == [("Stalls", 2, 4), ("Balcony", 1, 1)]
    assert view["ga"][0]["code"] == "floor" and view["capacity"] == 5 + 5
    labels = await pg.fetch("SELECT s.label, t.code FROM seats s JOIN price_tiers t ON t.id = s.price_tier_id "
                            "WHERE s.event_id = $1 ORDER BY seat_index", event["id"])
    assert [(r["label"], r["code"]) for r in labels] == [
        ("Stalls-A-1", "front"), ("Stalls-A-2", "front"), ("Stalls-A-3", "back"), ("Stalls-B-1", "back"),
        ("Balcony-1-101", "back")]
    # it sells with the imported map and the price of each seat's tier
    assert (await client.post(f"/v1/events/{event['id']}/open", headers=auth(key))).status_code == 200
    public = (await client.get(f"/v1/events/{event['id']}/public")).json()
    row_a = public["sections"][0]["rows"][0]
    assert row_a["seats"] == ["1", "2", "3"] and row_a["seat_prices"] == [8000, 8000, 4000]
    me = await buyer(client)
    hold = await client.post(f"/v1/events/{event['id']}/holds", json={"seats": ["Balcony-1-101"]}, headers=me)
    assert hold.status_code == 201, hold.text
    # an open event's seat map cannot change
    again = await client.put(f"/v1/events/{event['id']}/seat-map", content=MAP,
                             headers={**auth(key), "Content-Type": "text/csv"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


async def test_a_bad_import_changes_nothing_and_says_where(client, database_url, pg):
    _, key = await new_org(database_url)
    event = await _draft(client, key)
    before = await pg.fetch("SELECT label FROM seats WHERE event_id = $1 ORDER BY seat_index", event["id"])
    bad = MAP + "Balcony,1,102,vip\n"
    resp = await client.put(f"/v1/events/{event['id']}/seat-map", content=bad,
                            headers={**auth(key), "Content-Type": "text/csv"})
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "invalid_seat_map" and err["details"] == {"line": 7, "column": "tier"}
    assert "line 7, column tier" in err["message"] and "'vip'" in err["message"]
    assert await pg.fetch("SELECT label FROM seats WHERE event_id = $1 ORDER BY seat_index", event["id"]) == before
    # other organisations, other roles, other media types
    _, other = await new_org(database_url)
    assert (await client.put(f"/v1/events/{event['id']}/seat-map", content=MAP,
                             headers={**auth(other), "Content-Type": "text/csv"})).status_code == 404
    sales = (await client.post("/v1/keys", json={"name": "s", "role": "sales"}, headers=auth(key))).json()["key"]
    assert (await client.put(f"/v1/events/{event['id']}/seat-map", content=MAP,
                             headers={**auth(sales), "Content-Type": "text/csv"})).status_code == 403
    xml = await client.put(f"/v1/events/{event['id']}/seat-map", content="<seats/>",
                           headers={**auth(key), "Content-Type": "application/xml"})
    assert xml.status_code == 415
    assert await pg.fetch("SELECT label FROM seats WHERE event_id = $1 ORDER BY seat_index", event["id"]) == before


def _big_csv(n: int) -> str:
    lines = ["section,row,seat,tier"]
    per_row, rows = 1000, 250
    for i in range(n):
        section, rest = divmod(i, per_row * rows)
        row, seat = divmod(rest, per_row)
        lines.append(f"S{section},{row + 1},{seat + 1},back")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
async def test_the_documented_maximum_is_accepted_and_one_more_is_refused(client, database_url, pg):
    _, key = await new_org(database_url)
    event = await _draft(client, key)
    headers = {**auth(key), "Content-Type": "text/csv"}
    over = await client.put(f"/v1/events/{event['id']}/seat-map", content=_big_csv(MAX_SEATS + 1), headers=headers)
    assert over.status_code == 422, over.text[:300]
    err = over.json()["error"]
    assert err["details"]["line"] == MAX_SEATS + 2 and "at most 250,000 seats" in err["message"]
    full = await client.put(f"/v1/events/{event['id']}/seat-map", content=_big_csv(MAX_SEATS), headers=headers)
    assert full.status_code == 200, full.text[:300]
    assert sum(s["seats"] for s in full.json()["sections"]) == MAX_SEATS
    assert await pg.fetchval("SELECT count(*) FROM seats WHERE event_id = $1", event["id"]) == MAX_SEATS


async def test_an_event_body_may_carry_its_seat_map_as_csv(client, database_url):
    _, key = await new_org(database_url)
    body = {"name": "CSV Night", "currency": "EUR", "price_tiers": TIERS, "seat_map_csv": MAP}
    resp = await client.post("/v1/events", json=body, headers=auth(key))
    assert resp.status_code == 201, resp.text
    assert [s["seats"] for s in resp.json()["sections"]] == [4, 1]
    bad = await client.post("/v1/events", json={**body, "seat_map_csv": MAP.replace("Stalls,B,1", "Stalls,A,1")},
                            headers=auth(key))
    assert bad.status_code == 422 and bad.json()["error"]["details"] == {"line": 5, "column": "seat"}
    both = await client.post("/v1/events", json={**body, "sections": seat_spec()["sections"]}, headers=auth(key))
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "event", "import", *args], capture_output=True,
                          text=True, env=stack_env(settings), timeout=120)


async def test_cli_imports_into_a_draft_or_creates_an_event(client, settings, database_url, tmp_path):
    org_id, key = await new_org(database_url)
    event = await _draft(client, key)
    good = tmp_path / "seats.csv"
    good.write_text(MAP)
    done = _cli(settings, str(good), "--event", str(event["id"]))
    assert done.returncode == 0, done.stderr
    assert "2 sections, 5 seats" in done.stdout
    view = (await client.get(f"/v1/events/{event['id']}", headers=auth(key))).json()
    assert [s["name"] for s in view["sections"]] == ["Stalls", "Balcony"]
    bad = tmp_path / "bad.csv"
    bad.write_text(MAP + "Balcony,1,x y!,back\n")
    refused = _cli(settings, str(bad), "--event", str(event["id"]))
    assert refused.returncode == 1 and "line 7, column seat" in refused.stderr
    body = tmp_path / "event.json"
    body.write_text(json.dumps({"name": "From the CLI", "currency": "EUR", "price_tiers": TIERS}))
    created = _cli(settings, str(good), "--spec", str(body), "--org", str(org_id), "--json")
    assert created.returncode == 0, created.stderr
    new = json.loads(created.stdout)
    assert new["name"] == "From the CLI" and sum(s["seats"] for s in new["sections"]) == 5
    assert (await client.get(f"/v1/events/{new['id']}", headers=auth(key))).status_code == 200
    missing = _cli(settings, str(tmp_path / "nope.csv"), "--event", str(event["id"]))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


async def test_seat_map_uploads_have_their_own_size_limit(settings, database_url):
    _, key = await new_org(database_url)
    async with app_client(settings, seat_map_max_bytes=4096, max_body_bytes=1024) as client:
        event = await _draft(client, key)
        url = f"/v1/events/{event['id']}/seat-map"
        headers = {**auth(key), "Content-Type": "text/csv"}
        body = MAP + "".join(f"Gallery,1,{n},back\n" for n in range(1, 60))  # ~1.2 KB: over the JSON limit
        assert 1024 < len(body) < 4096
        assert (await client.put(url, content=body, headers=headers)).status_code == 200
        big = body + "".join(f"Gallery,2,{n},back\n" for n in range(1, 300))
        resp = await client.put(url, content=big, headers=headers)
        assert resp.status_code == 413 and resp.json()["error"]["details"] == {"max_bytes": 4096}
        # every other route keeps the JSON limit
        resp = await client.post("/v1/events", json={**seat_spec(), "venue": "x" * 1100}, headers=auth(key))
        assert resp.status_code == 413 and resp.json()["error"]["details"] == {"max_bytes": 1024}
