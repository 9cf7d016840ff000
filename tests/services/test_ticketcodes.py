"""Ticket codes: published test vectors, round trips, tampering, wrong keys, garbage, QR size."""

from __future__ import annotations

import base64

import pytest
import segno
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.orders import ticketcodes as tc
from gateway.orders.ticketcodes import InvalidCode, TicketClaims

# The vectors of docs/ticket-codes.md (seed: RFC 8032 test 1 secret key).
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
VECTORS = [
    (1, 42, 1, "AEAACAAAAAVAAAAAAGRVKBZHWYI2EOHLFMGILQ2XWYVXZFBLEJIKREDCB2JIMHX4UPTMKE54IILOQ4QPH45SITBBEKIXV7ZTZEXBPGWP5Q7S43K5RQ4DK7IC"),
    (1, 42, 2, "AEAACAAAAAVAAAAAALILCYTQUTKWUAT76AIRIFFQV4MADEHPJJJKZVC4SX2ZWYFOQAJSUP6F7FR6FSABP5TREMK4ZHKUACHUDXPH7GMMRAV45G3OEHZ7LRIJ"),
    (7, 4294967295, 4294967295, "AEAAP7777777777775RKM4IY6UNH6PFYG2BWP7SDJEIUXDILJX4M62WGD2KH4KFESE2M5GN5VZAQD5WANS3XKXVCP35NCJH5QUYI3DTF7AI2TPJ4GD6YSFAK"),
    (0, 0, 0, "AEAAAAAAAAAAAAAAABJ74FNMSTNCVW536ALS44PCLW4RHDGHYMD3YI5TXPYX7R3EAEHOT3ALUEDMIAUHGP7C6K6DAOUMMB3MGWSJEH5GQH6Q7SIHOUQRNZQP"),
]
KEYS = {1: PUBLIC, 7: PUBLIC, 0: PUBLIC}


def test_public_key_of_seed() -> None:
    assert tc.public_key_of(SEED) == PUBLIC


@pytest.mark.parametrize(("key_id", "event_id", "serial", "code"), VECTORS)
def test_vectors(key_id: int, event_id: int, serial: int, code: str) -> None:
    assert tc.encode(private_key=SEED, key_id=key_id, event_id=event_id, serial=serial) == code
    expected = TicketClaims(1, key_id, event_id, serial)
    assert tc.verify(code, KEYS) == expected
    assert tc.decode(code) == expected
    raw = base64.b32decode(code)
    assert len(raw) == 75 and raw[0] == 1
    assert raw[1:3] == key_id.to_bytes(2, "big") and raw[3:7] == event_id.to_bytes(4, "big")
    assert raw[7:11] == serial.to_bytes(4, "big")


def test_round_trip_with_fresh_keys() -> None:
    private, public = tc.generate_keypair()
    assert len(private) == 32 and len(public) == 32
    code = tc.encode(private_key=private, key_id=3, event_id=123456, serial=789)
    assert len(code) == tc.CODE_LENGTH == 120
    assert tc.verify(code, {3: public}) == TicketClaims(1, 3, 123456, 789)


def test_scanner_input_is_normalised() -> None:
    code = VECTORS[0][3]
    assert tc.verify(f"  {code.lower()}\r\n", KEYS).serial == 1
    assert tc.verify("\t" + code + " ", KEYS).serial == 1


def test_every_tampered_byte_is_detected() -> None:
    raw = bytearray(base64.b32decode(VECTORS[0][3]))
    for position in range(len(raw)):
        for flip in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[position] ^= flip
            code = base64.b32encode(bytes(tampered)).decode()
            with pytest.raises(InvalidCode):
                tc.verify(code, KEYS)


def test_every_tampered_character_is_detected() -> None:
    code = VECTORS[1][3]
    for position in range(len(code)):
        replacement = "A" if code[position] != "A" else "B"
        with pytest.raises(InvalidCode):
            tc.verify(code[:position] + replacement + code[position + 1:], KEYS)


def test_wrong_key_and_unknown_key_id() -> None:
    _, other_public = tc.generate_keypair()
    code = VECTORS[0][3]
    with pytest.raises(InvalidCode) as info:
        tc.verify(code, {1: other_public})
    assert info.value.reason == "bad signature"
    with pytest.raises(InvalidCode) as info:
        tc.verify(code, {2: PUBLIC})
    assert info.value.reason == "unknown key id"
    with pytest.raises(InvalidCode) as info:
        tc.verify(code, {1: b"short"})
    assert info.value.reason == "unusable public key"
    # The same ticket re-signed under key id 2 is not valid under key id 1's entry.
    code2 = tc.encode(private_key=SEED, key_id=2, event_id=42, serial=1)
    with pytest.raises(InvalidCode):
        tc.verify(code2, {2: other_public})


def test_unknown_version_is_refused() -> None:
    raw = bytearray(base64.b32decode(VECTORS[0][3]))
    raw[0] = 2
    with pytest.raises(InvalidCode) as info:
        tc.decode(base64.b32encode(bytes(raw)).decode())
    assert info.value.reason == "unknown version"


@pytest.mark.parametrize("bad", ["", "A", "0" * 120, "1" * 120, "A" * 119, "A" * 121, "A" * 112 + "========",
                                 "é" * 120, "A" * 60 + " " + "A" * 59, None, 12, b"A" * 120])
def test_malformed_inputs(bad: object) -> None:
    with pytest.raises(InvalidCode):
        tc.decode(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidCode):
        tc.verify(bad, KEYS)  # type: ignore[arg-type]


def test_field_widths_are_enforced() -> None:
    for kwargs in ({"key_id": 1 << 16, "event_id": 1, "serial": 1}, {"key_id": 1, "event_id": 1 << 32, "serial": 1},
                   {"key_id": 1, "event_id": 1, "serial": -1}):
        with pytest.raises(ValueError):
            tc.encode(private_key=SEED, **kwargs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abc =\n", min_size=110,
                                                max_size=130)))
def test_garbage_text_only_raises_invalid_code(text: str) -> None:
    for fn in (tc.decode, lambda c: tc.verify(c, KEYS)):
        try:
            fn(text)
        except InvalidCode:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=75, max_size=75))
def test_random_payloads_never_verify(raw: bytes) -> None:
    code = base64.b32encode(raw).decode()
    try:
        tc.decode(code)
    except InvalidCode:
        pass
    with pytest.raises(InvalidCode):
        tc.verify(code, KEYS)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_round_trip_any_fields(key_id: int, event_id: int, serial: int) -> None:
    code = tc.encode(private_key=SEED, key_id=key_id, event_id=event_id, serial=serial)
    assert len(code) == 120
    assert tc.verify(code, {key_id: PUBLIC}) == TicketClaims(1, key_id, event_id, serial)


def test_qr_code_is_small_and_alphanumeric() -> None:
    for *_, code in VECTORS:
        qr = segno.make(code, error="m", micro=False)
        assert qr.mode == "alphanumeric"
        assert qr.version <= 10
        assert qr.version == 5 and qr.error == "M"
