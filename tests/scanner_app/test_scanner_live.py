"""The door logic (`scanner_app.scanner.Scanner`) against a real gateway, without a screen: two devices
offline at once, then both upload at the same moment; the earliest scan of a ticket wins everywhere."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.orders import ticketcodes
from scanner_app.client import GatewayClient
from scanner_app.scanner import OFFLINE, ONLINE, Scanner
from scanner_app.store import Store
from tests.scanner_app.conftest import Gateway
from tests.utils.door import Door, open_door
from tests.utils.factories import auth
from tests.utils.live import start_worker

pytestmark = pytest.mark.slow


class Device:
    def __init__(self, door: Door, gate: str, path: Path) -> None:
        self.info = door.device(gate)
        self.store = Store(path / f"{gate}.sqlite3")
        self.client = GatewayClient(door.base, self.info["token"])
        self.scanner = Scanner(client=self.client, store=self.store, retry_s=0.2)

    def close(self) -> None:
        self.client.close()
        self.store.close()


def until_synced(scanner: Scanner, timeout: float = 20.0) -> list:
    done = []
    deadline = time.monotonic() + timeout
    while scanner.waiting and time.monotonic() < deadline:
        done += scanner.tick()
        time.sleep(0.05)
    assert scanner.waiting == 0, scanner.last_error
    return done


def test_two_offline_devices_then_sync_at_once(gateway: Gateway, database_url: str, tmp_path: Path) -> None:
    door = open_door(gateway.url, database_url)
    t1, t2 = door.tickets[0], door.tickets[1]
    north, south = Device(door, "north", tmp_path), Device(door, "south", tmp_path)
    try:
        for d in (north, south):
            d.scanner.start()
            assert d.scanner.mode == ONLINE and len(d.scanner.manifest.tickets) == len(door.tickets)
        gateway.stop()
        # Both devices let both tickets in, in this order: north t1, south t1, south t2, north t2. The scans
        # are 0.2 s apart: more than the uncertainty of the gateway's clock correction of each upload.
        for device, ticket in ((north, t1), (south, t1), (south, t2), (north, t2)):
            assert device.scanner.scan(ticket["code"]).result == "admitted"
            time.sleep(0.2)
        assert north.scanner.mode == south.scanner.mode == OFFLINE
        assert north.scanner.waiting == south.scanner.waiting == 2

        gateway.start()
        results: dict[str, list] = {}
        start = threading.Barrier(2)

        def sync(name: str, d: Device) -> None:
            start.wait()
            results[name] = until_synced(d.scanner)

        threads = [threading.Thread(target=sync, args=(n, d)) for n, d in (("north", north), ("south", south))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        by = {name: {r.serial: r for r in rs} for name, rs in results.items()}
        s1, s2 = (ticketcodes.decode(t["code"]).serial for t in (t1, t2))
        # The earlier offline scan of each ticket wins, whichever upload arrived first: t1 was north's,
        # t2 south's. A later scan uploaded first was admitted for the moment and then displaced by the
        # earlier one (answered "admitted" with conflict=true); else it is answered duplicate at once.
        for serial, early, late in ((s1, "north", "south"), (s2, "south", "north")):
            first, second = by[early][serial], by[late][serial]
            assert first.server == "admitted", (early, first)
            if second.server == "duplicate":
                assert second.overruled and second.first_scan["gate"] == early
            else:
                assert second.server == "admitted" and first.conflict, (second, first)
        # Exactly one admission per ticket, seen from a third device online.
        east = door.device("east")
        for ticket, gate in ((t1, "north"), (t2, "south")):
            answer = door.scan(east["token"], ticket["code"])
            assert answer["result"] == "duplicate" and answer["first_scan"]["gate"] == gate

        # Uploading the same scans again changes nothing: the gateway replays its first answers.
        settled = north.store.settled()
        again = north.client.batch([{"scan_id": s["scan_id"], "code": s["code"], "scanned_at": s["scanned_at"],
                                     "direction": "in", "local_result": s["local_result"]} for s in settled],
                                   sent_at=settled[-1]["scanned_at"], queue=0)
        assert [r["replay"] for r in again["results"]] == [True, True]
        assert [r["result"] for r in again["results"]] == [s["server_result"] for s in settled]

        devices = httpx.get(f"{door.base}/v1/events/{door.event_id}/devices", headers=auth(door.key), timeout=10)
        listed = {d["gate"]: d for d in devices.json()["devices"]}
        assert listed["north"]["last_contact_at"] and listed["north"]["queue_length"] == 0
    finally:
        north.close()
        south.close()


def test_online_answers_are_remembered_for_offline(gateway: Gateway, database_url: str, tmp_path: Path) -> None:
    """A ticket another gate let in while this device was online is a duplicate here offline too."""
    door = open_door(gateway.url, database_url, reentry={"ga": ["floor"], "sections": []})
    seat, floor = door.tickets[0], door.tickets[4]
    d = Device(door, "north", tmp_path)
    try:
        d.scanner.start()
        assert d.scanner.manifest.reentry_ga == frozenset({"floor"})
        online = d.scanner.scan(seat["code"])
        assert (online.result, online.seat, online.holder) == ("admitted", "A-1-1", "ada@example.org")
        assert d.scanner.scan(floor["code"]).result == "admitted"
        assert d.scanner.scan(floor["code"], direction="out").result == "exited"
        gateway.stop()
        offline = d.scanner.scan(seat["code"])
        assert (offline.result, offline.mode, offline.first_scan["gate"]) == ("duplicate", OFFLINE, "north")
        back_in = d.scanner.scan(floor["code"])  # re-entry type, scanned out online: in again offline
        assert back_in.result == "admitted" and back_in.reason == "re-entry"
        gateway.start()
        settled = until_synced(d.scanner)
        assert [(r.local, r.server) for r in settled] == [("duplicate", "duplicate"), ("admitted", "admitted")]
    finally:
        d.close()


def test_degraded_gateway_keeps_the_device_online(settings, tmp_root: Path, payment_simulator: str,
                                                   database_url: str, tmp_path: Path) -> None:
    """Redis gone, gateway up: the gateway answers degraded, the device stays with it (no offline
    switch: the gateway still sees every scan), and is plainly online again once Redis is back."""
    import io

    from gateway.stack.embedded import RedisServer
    from scanner_app.terminal import Terminal

    redis = RedisServer(tmp_path / "redis", persistent=True).start()
    gw = Gateway(settings.model_copy(update={"redis_url": redis.url}), tmp_root)
    try:
        gw.start()
        door = open_door(gw.url, database_url)
        t1, t2 = door.tickets[0], door.tickets[1]
        d = Device(door, "north", tmp_path)
        try:
            d.scanner.start()
            assert d.scanner.scan(t1["code"]).result == "admitted"
            redis.stop()
            degraded = d.scanner.scan(t2["code"])
            assert (degraded.result, degraded.mode, degraded.seat) == ("admitted", "degraded", "A-1-2")
            assert not degraded.queued and d.scanner.waiting == 0  # the gateway keeps the scan, not the device
            assert "● DEGRADED" in Terminal(d.scanner, out=io.StringIO()).status_line()
            assert d.scanner.scan(t2["code"]).result == "duplicate"  # the gateway's own seen-set
            d.scanner.retry_s, d.scanner._next_refresh = 0.2, 0.0
            d.scanner.tick()  # the manifest answers 503: keep what we have, stay with the gateway
            assert d.scanner.mode == "degraded" and d.scanner.manifest is not None
            redis.start()
            deadline = time.monotonic() + 20
            while True:
                answer = d.scanner.scan(door.tickets[2]["code"]) if d.scanner.mode != "online" else None
                if d.scanner.mode == "online":
                    break
                assert time.monotonic() < deadline, "the gateway never left degraded mode"
                time.sleep(0.3)
            assert answer is not None and answer.result in ("admitted", "duplicate")
            assert d.scanner.scan(t2["code"]).result == "duplicate"  # replayed into Redis
        finally:
            d.close()
    finally:
        gw.stop()
        redis.stop()


def test_a_refund_reaches_the_device_with_the_next_manifest(gateway: Gateway, database_url: str,
                                                             tmp_path: Path) -> None:
    door = open_door(gateway.url, database_url)
    floor = door.tickets[4]
    d = Device(door, "north", tmp_path)
    try:
        d.scanner.start()
        version = d.scanner.manifest.version
        with start_worker(gateway.settings, "ledger", tmp_path):  # the paid order reaches Postgres
            deadline = time.monotonic() + 20
            while True:
                resp = httpx.post(f"{door.base}/v1/orders/{floor['order_id']}/refund", headers=auth(door.key),
                                  timeout=15)
                if resp.status_code != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        d.scanner._next_refresh = 0.0
        d.scanner.tick()  # GET /v1/scan/manifest?since=<version>: only what changed
        serial = ticketcodes.decode(floor["code"]).serial
        assert d.scanner.manifest.version > version and serial in d.scanner.manifest.revoked
        gateway.stop()
        void = d.scanner.scan(floor["code"])
        assert (void.result, void.mode, void.seat) == ("void", OFFLINE, None)
        # Restarted while the gateway is away: the stored manifest (full answer + the change) is used.
        d.close()
        d.store = Store(tmp_path / "north.sqlite3")
        d.client = GatewayClient(door.base, d.info["token"])
        restarted = Scanner(client=d.client, store=d.store, retry_s=60)
        restarted.start()
        assert restarted.mode == OFFLINE and restarted.manifest.version == d.scanner.manifest.version
        assert restarted.scan(floor["code"]).result == "void"
        first = restarted.scan(door.tickets[0]["code"])  # the rest of the manifest is intact
        assert (first.result, first.seat, first.holder) == ("admitted", "A-1-1", "ada@example.org")
    finally:
        d.close()


def test_one_scan_the_gateway_refuses_does_not_hold_back_the_queue(gateway: Gateway, database_url: str,
                                                                    tmp_path: Path) -> None:
    from scanner_app.store import QueuedScan

    door = open_door(gateway.url, database_url)
    d = Device(door, "north", tmp_path)
    try:
        d.scanner.start()
        # A queue entry the gateway answers 422 for (a scan id outside the contract's characters),
        # between two good ones.
        good = [t["code"] for t in door.tickets[:2]]
        d.store.enqueue(QueuedScan("good-1", good[0], "2026-12-01T00:00:00.000Z", "in", "admitted", "A-1-1"))
        d.store.enqueue(QueuedScan("bad id!", good[1], "2026-12-01T00:00:00.100Z", "in", "admitted", "A-1-2"))
        d.store.enqueue(QueuedScan("good-2", good[1], "2026-12-01T00:00:00.200Z", "in", "admitted", "A-1-2"))
        settled = until_synced(d.scanner)
        assert [(r.scan_id, r.server) for r in settled] == [
            ("good-1", "admitted"), ("bad id!", "invalid"), ("good-2", "admitted")]
        assert d.scanner.waiting == 0
    finally:
        d.close()
