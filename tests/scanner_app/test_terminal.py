"""`python -m scanner_app` on a pseudo-terminal against a real gateway, typed into the way a
keyboard-wedge barcode scanner types (code + Enter): online scans, the gateway stopped (offline
answers checked on the device and queued), the gateway back (queue uploaded, answers reconciled,
a ticket another gate let in first flagged as a duplicate)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from gateway.orders import ticketcodes
from tests.scanner_app.conftest import Gateway
from tests.utils.door import Door, open_door
from tests.utils.factories import auth

pytestmark = pytest.mark.slow


def serial_of(ticket: dict) -> int:
    return ticketcodes.decode(ticket["code"]).serial


def forged(code: str) -> str:
    raw = bytearray(base64.b32decode(code))
    raw[30] ^= 0x10
    return base64.b32encode(bytes(raw)).decode()


def test_online_then_offline_then_back(gateway: Gateway, database_url: str, terminal, tmp_path: Path) -> None:
    door: Door = open_door(gateway.url, database_url)
    t1, t2, t3, t4, floor1, _ = door.tickets
    north, south = door.device("north"), door.device("south")
    term = terminal("--gateway", gateway.url, "--token", north["token"], "--data-dir", str(tmp_path),
                    "--retry", "0.5", "--no-bell")
    term.expect(r"Door Night \(#\d+\) · gate north")
    term.expect(r"● ONLINE")

    # Online: the gateway answers; seat and holder come with the answer.
    term.type(t1["code"])
    term.expect(r">>> ADMIT\s+seat A-1-1\s+ada@example\.org\s+ticket #%d" % serial_of(t1))
    term.expect(r"admitted 1 · duplicate 0 · invalid 0")
    term.type("  " + t1["code"].lower() + "  ")  # wedge scanners may send lower case and spaces
    term.expect(r">>> DUPLICATE\s+seat A-1-1")
    term.expect(r"first scanned \S+ at gate north")
    term.type(forged(t2["code"]))
    term.expect(r">>> INVALID.*\(bad_signature\)")
    term.type("hello door")
    term.expect(r">>> INVALID.*\(malformed\)")
    term.expect(r"admitted 1 · duplicate 1 · invalid 2")

    # Another gate lets ticket 4 in while this device still has the network.
    assert door.scan(south["token"], t4["code"])["result"] == "admitted"

    # The gateway goes away: the client notices at the next scan and answers by itself.
    gateway.stop()
    term.type(t2["code"])
    term.expect(r">>> ADMIT\s+seat A-1-2\s+ada@example\.org")  # seat and holder opened from the manifest
    term.expect(r"checked on this device \(offline\); queued for the gateway")
    term.expect(r"OFFLINE.*1 waiting to upload")
    term.type(t1["code"])  # let in online before: this device remembers
    term.expect(r">>> DUPLICATE\s+seat A-1-1.*first scanned \S+ at gate north")
    term.type(t2["code"])
    term.expect(r">>> DUPLICATE\s+seat A-1-2")
    term.type(floor1["code"])
    term.expect(r">>> ADMIT\s+seat GA floor\s+alan@example\.org")
    term.type(t4["code"])  # the south gate's admission is unknown here: admitted for now
    term.expect(r">>> ADMIT\s+seat A-1-4\s+grace@example\.org")
    term.type(forged(t3["code"]))  # a forged code is refused offline too, and not queued
    term.expect(r">>> INVALID.*\(bad_signature\)")
    term.expect(r"OFFLINE.*5 waiting to upload")

    # The gateway is back: the queue goes up by itself; ticket 4 turns out to be a duplicate.
    gateway.start()
    term.expect(r"uploaded 5 offline scan\(s\): 4 confirmed, 1 changed by the gateway", timeout=30)
    term.expect(r"ticket #%d seat A-1-4: ADMIT here -> DUPLICATE \(first at gate south" % serial_of(t4))
    term.expect(r"● ONLINE")

    # The gateway now knows what the device decided offline.
    again = door.scan(south["token"], t2["code"])
    assert again["result"] == "duplicate" and again["first_scan"]["gate"] == "north"
    assert door.scan(south["token"], floor1["code"])["result"] == "duplicate"

    # Online again: answers come from the gateway.
    term.type(t3["code"])
    term.expect(r">>> ADMIT\s+seat A-1-3\s+grace@example\.org")
    term.type("quit")
    term.expect(r"bye")
    assert term.wait() == 0


def test_a_revoked_device_is_refused(gateway: Gateway, database_url: str, terminal, tmp_path: Path) -> None:
    door = open_door(gateway.url, database_url)
    device = door.device("west")
    term = terminal("--gateway", gateway.url, "--token", device["token"], "--data-dir", str(tmp_path), "--no-bell",
                    "--retry", "0.5")
    term.expect(r"● ONLINE")
    resp = httpx.delete(f"{gateway.url}/v1/events/{door.event_id}/devices/{device['device_id']}",
                        headers=auth(door.key), timeout=10)
    assert resp.status_code == 200, resp.text
    term.type(door.tickets[0]["code"])
    term.expect(r">>> REFUSED.*device_revoked")
    term.type(door.tickets[1]["code"])  # no offline admissions on a revoked device either
    term.expect(r">>> REFUSED")
    term.type("quit")
    assert term.wait() == 0
    again = terminal("--gateway", gateway.url, "--token", device["token"], "--data-dir", str(tmp_path), "--no-bell")
    again.expect(r"refused by the gateway.*device_revoked")
    assert again.wait() == 3
    # Restarted where the gateway cannot be reached: the device remembers it was revoked.
    gateway.stop()
    third = terminal("--gateway", gateway.url, "--token", device["token"], "--data-dir", str(tmp_path), "--no-bell")
    third.expect(r"OFFLINE.*DEVICE REFUSED.*device_revoked")
    third.type(door.tickets[2]["code"])
    third.expect(r">>> REFUSED")
    third.type("quit")
    assert third.wait() == 0


def test_no_gateway_and_nothing_stored(terminal, tmp_path: Path) -> None:
    term = terminal("--gateway", "http://127.0.0.1:9", "--token", "d.nothing", "--data-dir", str(tmp_path))
    term.expect(r"cannot start: cannot reach the gateway .* no manifest is stored yet")
    assert term.wait() == 2


def test_a_bad_token_is_refused_at_start(gateway: Gateway, terminal, tmp_path: Path) -> None:
    term = terminal("--gateway", gateway.url, "--token", "d.not-a-token", "--data-dir", str(tmp_path))
    term.expect(r"refused by the gateway.*invalid_token")
    assert term.wait() == 3


def test_a_fast_scanner_gets_every_answer_in_order(gateway: Gateway, database_url: str, terminal,
                                                   tmp_path: Path) -> None:
    """Wedge scanners type faster than anyone reads: codes sent back to back are answered one by one."""
    door = open_door(gateway.url, database_url)
    device = door.device("rush")
    term = terminal("--gateway", gateway.url, "--token", device["token"], "--data-dir", str(tmp_path), "--no-bell")
    term.expect(r"● ONLINE")
    codes = [t["code"] for t in door.tickets]
    for code in codes + codes[:2]:
        term.type(code)
    for seat in ("A-1-1", "A-1-2", "A-1-3", "A-1-4", "GA floor", "GA floor"):
        term.expect(r">>> ADMIT\s+seat %s" % seat)
    term.expect(r">>> DUPLICATE\s+seat A-1-1")
    term.expect(r">>> DUPLICATE\s+seat A-1-2")
    term.expect(r"admitted 6 · duplicate 2 · invalid 0")
    term.type("sync")  # a command, not a code: nothing waits, the status line answers
    term.expect(r"● ONLINE\s+\|\s+admitted 6 · duplicate 2 · invalid 0")
    term.type("quit")
    assert term.wait() == 0
    assert ">>> INVALID" not in term.text


def test_scan_out_and_back_in(gateway: Gateway, database_url: str, terminal, tmp_path: Path) -> None:
    door = open_door(gateway.url, database_url, reentry={"ga": ["floor"], "sections": []})
    device = door.device("re-entry")
    seat, floor = door.tickets[0], door.tickets[4]
    term = terminal("--gateway", gateway.url, "--token", device["token"], "--data-dir", str(tmp_path), "--no-bell")
    term.expect(r"● ONLINE")
    term.type(floor["code"])
    term.expect(r">>> ADMIT\s+seat GA floor")
    term.type(seat["code"])
    term.expect(r">>> ADMIT\s+seat A-1-1")
    term.type("OUT")
    term.expect(r"direction: OUT.*DIRECTION: OUT")
    term.type(floor["code"])
    term.expect(r">>> OUT\s+seat GA floor")
    term.type(seat["code"])
    term.expect(r">>> OUT\s+seat A-1-1")  # every ticket can be scanned out ...
    term.type(door.tickets[5]["code"])
    term.expect(r">>> NOT INSIDE\s+seat GA floor")
    term.type("in")
    term.expect(r"direction: IN")
    term.type(floor["code"])
    term.expect(r">>> ADMIT\s+seat GA floor")  # ... a re-entry type comes back in,
    term.type(seat["code"])
    term.expect(r">>> DUPLICATE\s+seat A-1-1")  # a seat without re-entry does not
    term.type("quit")
    assert term.wait() == 0


def test_an_event_not_on_sale_cannot_be_scanned(gateway: Gateway, database_url: str, terminal,
                                                tmp_path: Path) -> None:
    from tests.utils.factories import new_org, seat_spec
    from tests.utils.servers import run_async

    _, key = run_async(new_org, database_url, "Draft Org")
    draft = httpx.post(f"{gateway.url}/v1/events", json=seat_spec(sections=1, rows=1, seats=2), headers=auth(key),
                       timeout=10)
    assert draft.status_code == 201, draft.text
    device = httpx.post(f"{gateway.url}/v1/events/{draft.json()['id']}/devices", json={"gate": "early"},
                        headers=auth(key), timeout=10)
    assert device.status_code == 201, device.text
    term = terminal("--gateway", gateway.url, "--token", device.json()["token"], "--data-dir", str(tmp_path))
    term.expect(r"cannot start: 409 not_on_sale")
    assert term.wait() == 2


def test_token_from_the_environment_and_the_default_data_dir(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k != "FLASHGATE_DEVICE_TOKEN"}
    run = lambda env, *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "scanner_app", "--gateway", "http://127.0.0.1:9", *args], env=env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    missing = run(base)
    assert missing.returncode == 2 and "a device token is needed" in missing.stderr
    env = {**base, "FLASHGATE_DEVICE_TOKEN": "d.from-env", "XDG_DATA_HOME": str(tmp_path)}
    started = run(env)
    assert started.returncode == 2 and "no manifest is stored yet" in started.stderr
    files = list((tmp_path / "flashgate-scanner").glob("scanner-*.sqlite3"))
    assert len(files) == 1  # one file per gateway and token, under $XDG_DATA_HOME
    run({**env, "FLASHGATE_DEVICE_TOKEN": "d.another"})
    assert len(list((tmp_path / "flashgate-scanner").glob("scanner-*.sqlite3"))) == 2
