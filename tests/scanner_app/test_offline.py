"""The door client offline, with no gateway at all: a manifest it stored earlier, codes made by the
gateway's own code (imported by the test only), a real SQLite file, a gateway address nobody answers.

Also: the sealed seat/holder data of docs/scanning.md (its test vector), and one table of codes run
through the gateway's rules and the client's (the same answer from both)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.orders import ticketcodes
from gateway.scanning import rules as server_rules
from gateway.scanning import seal as server_seal
from scanner_app import rules
from scanner_app.client import GatewayClient
from scanner_app.manifest import Manifest, NotThisTicket, open_sealed
from scanner_app.scanner import OFFLINE, NoManifest, Scanner
from scanner_app.store import Store

EVENT = 4242
SEED, PUBLIC = ticketcodes.generate_keypair()
OTHER_SEED, OTHER_PUBLIC = ticketcodes.generate_keypair()
VECTOR_CODE = ("AEAACAAAAAVAAAAAAGRVKBZHWYI2EOHLFMGILQ2XWYVXZFBLEJIKREDCB2JIMHX4UPTMKE54IILOQ4QPH45SITBBEKIXV7ZTZEXBPG"
               "WP5Q7S43K5RQ4DK7IC")
VECTOR_SEALED = ("AAECAwQFBgcICQoLRhFA3ge24mKn9BqNtIJtdRZFeQz9l-Jw0XucB_RfwXV_GxI2MRBQ5Kbvnl7HbRmm7EXus_9r2l-X3QsWvA1hAC"
                 "ADi_I_A-sl9r81AYTG5JnP1p0")


def code(serial: int, *, event: int = EVENT, seed: bytes = SEED, key_id: int = 1) -> str:
    return ticketcodes.encode(private_key=seed, key_id=key_id, event_id=event, serial=serial)


TICKETS = {1: {"seat": "A-1-1", "section": "A", "type": None, "holder": "ada@example.org"},
           2: {"seat": "A-1-2", "section": "A", "type": None, "holder": "grace@example.org"},
           3: {"seat": None, "section": None, "type": "floor", "holder": "alan@example.org"},
           4: {"seat": "B-1-1", "section": "B", "type": None, "holder": "edsger@example.org"},
           5: {"seat": "B-1-2", "section": "B", "type": None, "holder": None}}


def manifest_body(*, revoked: tuple[int, ...] = (5,), reentry: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"event_id": EVENT, "event_name": "Test Night", "device_id": "dev-1", "gate": "north", "version": 7,
            "full": True, "keys": [{"key_id": 1, "public_key": PUBLIC.hex()}], "revoked": list(revoked),
            "tickets": [[s, server_seal.seal(code(s), data)] for s, data in sorted(TICKETS.items())],
            "reentry": reentry or {"ga": ["floor"], "sections": []}, "seal": server_seal.SCHEME,
            "generated_at": "2026-12-01T00:00:00.000Z"}


def nobody_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused at once


@pytest.fixture
def offline_device(tmp_path: Path):
    """A device that fetched its manifest earlier and now cannot reach its gateway."""
    path = tmp_path / "device.sqlite3"
    store = Store(path)
    store.save_manifest(manifest_body(), full=True)
    client = GatewayClient(nobody_listens(), "d.token")
    scanner = Scanner(client=client, store=store, retry_s=60)
    scanner.start()
    yield scanner, path
    client.close()
    store.close()


# -- sealed ticket data --------------------------------------------------------------------------------------


def test_the_documented_seal_vector_opens_with_its_code_only() -> None:
    info = open_sealed(VECTOR_CODE, VECTOR_SEALED)
    assert (info.seat, info.section, info.type, info.holder) == ("A-1-12", "A", None, "Ada Lovelace")
    assert open_sealed("  " + VECTOR_CODE.lower() + "\n", VECTOR_SEALED).holder == "Ada Lovelace"
    other = "AEAACAAAAAVAAAAAALILCYTQUTKWUAT76AIRIFFQV4MADEHPJJJKZVC4SX2ZWYFOQAJSUP6F7FR6FSABP5TREMK4ZHKUACHUDXPH7GMMRAV45G3OEHZ7LRIJ"
    with pytest.raises(NotThisTicket):
        open_sealed(other, VECTOR_SEALED)  # serial 2's code does not open serial 1's data
    raw = bytearray(base64.urlsafe_b64decode(VECTOR_SEALED + "=="))
    raw[20] ^= 1
    with pytest.raises(NotThisTicket):
        open_sealed(VECTOR_CODE, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))
    for garbage in ("", "!!!", "AAAA"):
        with pytest.raises(NotThisTicket):
            open_sealed(VECTOR_CODE, garbage)


def test_a_manifest_from_another_seal_scheme_is_refused() -> None:
    from scanner_app.manifest import ManifestError

    with pytest.raises(ManifestError, match="unknown seal"):
        Manifest.parse({**manifest_body(), "seal": "rot13/v9"})
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.parse({**manifest_body(), "keys": [{"key_id": 1, "public_key": "zz"}]})


# -- same rules as the gateway -------------------------------------------------------------------------------

PARITY = [
    ("this event's ticket", code(1), "ticket", None),
    ("lower case, padded", "  " + code(2).lower() + "\r\n", "ticket", None),
    ("another event's ticket", code(1, event=EVENT + 1, seed=OTHER_SEED), "wrong_event", None),
    ("forged with another key", code(3, seed=OTHER_SEED), "invalid", "bad_signature"),
    ("unknown key id", code(3, key_id=9), "invalid", "unknown_key"),
    ("serial altered", base64.b32encode(base64.b32decode(code(1))[:10] + b"\x09" + base64.b32decode(code(1))[11:])
     .decode(), "invalid", "bad_signature"),
    ("version 2", base64.b32encode(b"\x02" + base64.b32decode(code(1))[1:]).decode(), "invalid", "unknown_version"),
    ("too short", code(1)[:-2], "invalid", "malformed"),
    ("not base32", code(1)[:-1] + "0", "invalid", "malformed"),
    ("empty", "", "invalid", "malformed"),
]


@pytest.mark.parametrize(("name", "text", "kind", "reason"), PARITY, ids=[p[0] for p in PARITY])
def test_offline_rules_answer_like_the_gateway(name: str, text: str, kind: str, reason: str | None) -> None:
    server = server_rules.classify(text, EVENT, {1: PUBLIC})
    client = rules.decide(text, manifest=Manifest.parse(manifest_body(revoked=())), seen=lambda serial: None)
    assert server.kind == kind and server.reason == reason
    assert client.result == {"ticket": "admitted"}.get(kind, kind)
    assert client.reason == reason
    if kind != "invalid":
        assert client.claims is not None and client.claims.serial == server.serial


# -- the scanner offline -------------------------------------------------------------------------------------


def test_offline_answers_from_the_manifest_and_queues(offline_device) -> None:
    scanner, _ = offline_device
    assert scanner.mode == OFFLINE and scanner.manifest.gate == "north"
    first = scanner.scan(code(1))
    assert (first.result, first.mode, first.seat, first.holder, first.serial) == (
        "admitted", OFFLINE, "A-1-1", "ada@example.org", 1)
    assert first.queued and scanner.waiting == 1
    again = scanner.scan(code(1).lower() + "\n")
    assert again.result == "duplicate" and again.first_scan["gate"] == "north" and again.seat == "A-1-1"
    assert scanner.scan(code(5)).result == "void"  # refunded: in the revocation list
    forged = scanner.scan(code(2, seed=OTHER_SEED))
    assert (forged.result, forged.reason, forged.seat, forged.holder) == ("invalid", "bad_signature", None, None)
    assert scanner.scan(code(1, event=99, seed=OTHER_SEED)).result == "wrong_event"
    assert scanner.scan("hello").result == "invalid"
    ga = scanner.scan(code(3))
    assert (ga.result, ga.seat) == ("admitted", "GA floor")
    # Forged, other-event and junk scans are answered but not queued: nothing for the gateway to decide.
    assert scanner.waiting == 4
    assert [s.local_result for s in scanner.store.pending(10)] == ["admitted", "duplicate", "void", "admitted"]
    assert scanner.counts["admitted"] == 2 and scanner.counts["invalid"] == 2


def test_seen_set_and_queue_survive_a_restart(offline_device) -> None:
    scanner, path = offline_device
    assert scanner.scan(code(2)).result == "admitted"
    scanner.store.close()
    store = Store(path)
    try:
        again = Scanner(client=scanner.client, store=store, retry_s=60)
        again.start()  # gateway still unreachable: the stored manifest is used
        assert again.mode == OFFLINE and again.waiting == 1
        assert again.scan(code(2)).result == "duplicate"
        assert again.scan(code(4)).result == "admitted"
        assert again.waiting == 3
    finally:
        store.close()
        scanner.store = Store(path)  # the fixture closes it


def test_reentry_only_for_the_types_the_manifest_allows(offline_device) -> None:
    scanner, _ = offline_device
    # floor (GA) allows re-entry in the manifest's rules; seat A-1-1 does not.
    assert scanner.scan(code(3)).result == "admitted"
    assert scanner.scan(code(3), direction="out").result == "exited"
    back = scanner.scan(code(3))
    assert back.result == "admitted" and back.reason == "re-entry"
    assert scanner.scan(code(3)).result == "duplicate"  # inside again
    assert scanner.scan(code(1), direction="out").result == "not_inside"
    assert scanner.scan(code(1)).result == "admitted"
    assert scanner.scan(code(1), direction="out").result == "exited"
    assert scanner.scan(code(1)).result == "duplicate"  # out, but no re-entry for seats in section A


def test_a_ticket_newer_than_the_manifest_is_admitted_and_left_to_the_gateway(offline_device) -> None:
    scanner, _ = offline_device
    late = scanner.scan(code(77))
    assert late.result == "admitted" and late.seat is None and "manifest" in late.reason and late.queued


def test_a_sealed_entry_that_does_not_open_is_invalid(tmp_path: Path) -> None:
    body = manifest_body()
    body["tickets"][0][1] = body["tickets"][1][1]  # serial 1 carries serial 2's sealed data
    store = Store(tmp_path / "d.sqlite3")
    store.save_manifest(body, full=True)
    client = GatewayClient(nobody_listens(), "d.token")
    try:
        scanner = Scanner(client=client, store=store, retry_s=60)
        scanner.start()
        answer = scanner.scan(code(1))
        assert answer.result == "invalid" and answer.holder is None
    finally:
        client.close()
        store.close()


def test_no_gateway_and_no_stored_manifest_cannot_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.sqlite3")
    client = GatewayClient(nobody_listens(), "d.token")
    try:
        with pytest.raises(NoManifest, match="no manifest is stored"):
            Scanner(client=client, store=store).start()
    finally:
        client.close()
        store.close()


def test_probing_a_dead_gateway_keeps_the_device_offline(offline_device) -> None:
    scanner, _ = offline_device
    scanner.scan(code(1))
    scanner.retry_s = 0
    scanner._next_probe = 0.0
    assert scanner.tick() == [] and scanner.mode == OFFLINE and scanner.waiting == 1
    assert "ConnectError" in (scanner.last_error or "")


def test_a_gateway_that_does_not_answer_counts_as_gone(tmp_path: Path) -> None:
    """A gateway that accepts connections and never answers (hung, or a black-holed network
    behind a proxy): the scan is answered offline after the read budget, not left hanging."""
    import time

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        store = Store(tmp_path / "d.sqlite3")
        store.save_manifest(manifest_body(), full=True)
        client = GatewayClient(f"http://127.0.0.1:{hung.getsockname()[1]}", "d.token")
        try:
            scanner = Scanner(client=client, store=store, retry_s=60)
            scanner.mode = "online"  # as if the last contact had worked
            scanner.manifest = Manifest.parse(manifest_body())
            started = time.monotonic()
            answer = scanner.scan(code(2))
            took = time.monotonic() - started
            assert (answer.result, answer.mode, answer.queued) == ("admitted", OFFLINE, True)
            assert 1.5 < took < 4.0, took  # the 2 s read budget, once
            started = time.monotonic()
            assert scanner.scan(code(2)).result == "duplicate"
            assert time.monotonic() - started < 0.5  # offline now: no more waiting on the gateway
            assert "ReadTimeout" in (scanner.last_error or "")
        finally:
            client.close()
            store.close()


def test_a_probe_of_a_hung_gateway_never_delays_a_scan(tmp_path: Path) -> None:
    """Offline, the background keeps probing the gateway; a probe waiting on a hung gateway must not
    hold up the door."""
    import threading
    import time

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        store = Store(tmp_path / "d.sqlite3")
        store.save_manifest(manifest_body(), full=True)
        client = GatewayClient(f"http://127.0.0.1:{hung.getsockname()[1]}", "d.token")
        try:
            scanner = Scanner(client=client, store=store, retry_s=0)
            scanner.manifest = Manifest.parse(manifest_body())  # offline from the start
            probe = threading.Thread(target=scanner.tick)
            started = time.monotonic()
            probe.start()
            time.sleep(0.2)  # the probe is now waiting on the hung gateway
            answers = []
            for serial in (1, 2, 1):
                t0 = time.monotonic()
                answers.append(scanner.scan(code(serial)).result)
                assert time.monotonic() - t0 < 0.3
            assert answers == ["admitted", "admitted", "duplicate"]
            probe.join(10)
            assert time.monotonic() - started > 1.5  # the probe really did wait for the gateway
            assert scanner.mode == OFFLINE and scanner.waiting == 3
        finally:
            client.close()
            store.close()


def test_stored_manifest_takes_changes_and_full_replacements(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite3")
    try:
        assert store.load_manifest() is None
        body = manifest_body(revoked=(5,))
        store.save_manifest(body, full=True)
        change = {"event_id": EVENT, "gate": "north", "version": 8, "full": False, "keys": body["keys"],
                  "revoked": [4], "tickets": [[6, "c2VhbGVk"]], "reentry": {"ga": [], "sections": ["A"]}}
        store.save_manifest(change, full=False)
        stored = store.load_manifest()
        assert stored["version"] == 8 and stored["event_name"] == "Test Night"  # head kept, updated
        assert stored["revoked"] == [4, 5] and [s for s, _ in stored["tickets"]] == [1, 2, 3, 4, 5, 6]
        assert Manifest.parse(stored).reentry_sections == frozenset({"A"})
        store.save_manifest({**change, "full": True, "version": 9, "revoked": [], "tickets": [[1, "eA"]]}, full=True)
        stored = store.load_manifest()
        assert stored["revoked"] == [] and [tuple(t) for t in stored["tickets"]] == [(1, "eA")]
    finally:
        store.close()
