"""Pure parts of scanning: the code rules, request parsing, the Redis key layout."""

from __future__ import annotations

import base64

import pytest
from redis.crc import key_slot

from gateway.core.errors import DomainError
from gateway.orders import ticketcodes
from gateway.scanning import requests, rules
from gateway.store.keys import event_keys, scan_key, scan_keys

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def code(event_id: int = 42, serial: int = 1, key_id: int = 1, seed: bytes = SEED) -> str:
    return ticketcodes.encode(private_key=seed, key_id=key_id, event_id=event_id, serial=serial)


def flip(text: str, index: int) -> str:
    raw = bytearray(base64.b32decode(text))
    raw[index] ^= 1
    return base64.b32encode(bytes(raw)).decode()


@pytest.mark.parametrize("text, other, expected", [
    (code(), None, ("ticket", None)),
    (" " + code().lower() + "\r\n", None, ("ticket", None)),
    (flip(code(), 74), None, ("invalid", "bad_signature")),
    (flip(code(), 10), None, ("invalid", "bad_signature")),
    (code(key_id=2), None, ("invalid", "unknown_key")),
    (code(seed=bytes(32)), None, ("invalid", "bad_signature")),
    ("B" + code()[1:], None, ("invalid", "unknown_version")),
    (code()[:-1], None, ("invalid", "malformed")),
    (code()[:-1] + "0", None, ("invalid", "malformed")),
    ("", None, ("invalid", "malformed")),
    (code(event_id=7), None, ("wrong_event", None)),                   # offline: unverified
    (code(event_id=7), {1: PUBLIC}, ("wrong_event", None)),            # verified with that event's key
    (code(event_id=7, seed=bytes(32)), {1: PUBLIC}, ("invalid", "bad_signature")),
])
def test_classify(text, other, expected):
    verdict = rules.classify(text, 42, {1: PUBLIC}, other)
    assert (verdict.kind, verdict.reason) == expected
    if verdict.kind != "invalid":
        assert verdict.serial == 1


def test_classify_skips_the_signature_only_when_told():
    forged = flip(code(), 74)
    assert rules.classify(forged, 42, {1: PUBLIC}, verified=True).kind == "ticket"
    assert rules.classify(forged, 42, {1: PUBLIC}).kind == "invalid"


def test_every_scanning_key_is_in_the_event_slot():
    for event_id in (1, 42, 10**9):
        slots = {key_slot(k.encode()) for k in scan_keys("fg", event_id) + event_keys("fg", event_id)}
        slots.add(key_slot(scan_key("fg", event_id, "sealed").encode()))
        assert len(slots) == 1


def test_request_parsing():
    ok = requests.scan_request({"code": "x", "scan_id": "a:1", "direction": "out", "scanned_at": "2025-06-01T19:02:03.120Z"})
    assert ok.scanned_at_ms == 1748804523120 and ok.direction == "out"
    assert requests.scan_request({"code": "x", "scanned_at": 1748804523120}).scanned_at_ms == 1748804523120
    for bad in ({"code": "x", "scanned_at": "2025-06-01T19:02:03"}, {"code": "x", "scanned_at": True},
                {"code": "x", "scanned_at": 5}, {"code": None}, {"code": "x", "scan_id": ""}):
        with pytest.raises(DomainError) as err:
            requests.scan_request(bad)
        assert err.value.status == 422
    assert requests.since_version("12") == 12 and requests.since_version("-1") is None
    assert requests.queue_length("3") == 3 and requests.queue_length(None) is None


def test_seal_key_is_rfc5869_hkdf():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from gateway.scanning import seal

    for text in (code(), code(serial=99), "A" * 120):
        expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"flashgate-seal-v1", info=b"ticket")
        assert seal.derive_key(text) == expected.derive(text.encode())


def test_scan_uuid_is_uuid5():
    import uuid

    from gateway.scanning.service import SCAN_NS, scan_uuid

    for device, sid in (("3b0d0c9e-6b7e-4c5d-9a51-0d2e8c7b1f00", "a1"), ("d", "x" * 64), ("é", "1")):
        assert scan_uuid(device, sid) == str(uuid.uuid5(SCAN_NS, f"{device}|{sid}"))
