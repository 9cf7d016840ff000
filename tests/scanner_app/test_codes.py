"""The door device's code check against the gateway's: one table of codes, the same verdict from both.

The gateway issues codes (`gateway.orders.ticketcodes`, imported here by the test only); the
client verifies them with nothing but the public keys (`scanner_app.codes`).
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.orders import ticketcodes as server
from scanner_app import codes as client

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
OTHER_SEED, OTHER_PUBLIC = server.generate_keypair()
KEYS = {1: PUBLIC, 7: PUBLIC, 0: PUBLIC}
VECTOR = "AEAACAAAAAVAAAAAAGRVKBZHWYI2EOHLFMGILQ2XWYVXZFBLEJIKREDCB2JIMHX4UPTMKE54IILOQ4QPH45SITBBEKIXV7ZTZEXBPGWP5Q7S43K5RQ4DK7IC"


def flip(code: str, index: int) -> str:
    raw = bytearray(base64.b32decode(code))
    raw[index] ^= 0x01
    return base64.b32encode(bytes(raw)).decode()


def good(key_id: int, event: int, serial: int, seed: bytes = SEED) -> str:
    return server.encode(private_key=seed, key_id=key_id, event_id=event, serial=serial)


CASES = [
    ("published vector", VECTOR),
    ("lower case with a wedge scanner's newline", "  " + VECTOR.lower() + "\r\n"),
    ("largest fields", good(7, 2**32 - 1, 2**32 - 1)),
    ("serial changed", flip(VECTOR, 10)),
    ("event changed", flip(VECTOR, 6)),
    ("signature changed", flip(VECTOR, 40)),
    ("version 2", base64.b32encode(b"\x02" + base64.b32decode(VECTOR)[1:]).decode()),
    ("signed by another key", good(1, 42, 3, OTHER_SEED)),
    ("unknown key id", good(9, 42, 3)),
    ("one character short", VECTOR[:-1]),
    ("one character long", VECTOR + "A"),
    ("digit outside base32", VECTOR[:-1] + "1"),
    ("empty", ""),
    ("only spaces", "   "),
    ("a URL", "https://example.org/" + VECTOR[:100]),
    ("not a string", None),
]


@pytest.mark.parametrize(("name", "code"), CASES, ids=[c[0] for c in CASES])
def test_same_verdict_as_the_gateway(name: str, code: str) -> None:
    try:
        expected = server.verify(code, KEYS)
    except server.InvalidCode as exc:
        with pytest.raises(client.BadCode) as refused:
            client.verify(code, KEYS)
        assert refused.value.reason == exc.reason or exc.reason == "not a string"
    else:
        claims = client.verify(code, KEYS)
        assert (claims.key_id, claims.event_id, claims.serial) == (expected.key_id, expected.event_id,
                                                                    expected.serial)


def test_a_code_is_accepted_only_with_its_own_events_key() -> None:
    code = good(1, 5, 10, OTHER_SEED)
    assert client.verify(code, {1: OTHER_PUBLIC}).serial == 10
    with pytest.raises(client.BadCode, match="bad signature"):
        client.verify(code, {1: PUBLIC})
    with pytest.raises(client.BadCode, match="unusable public key"):  # a broken key in a manifest refuses too
        client.verify(code, {1: b"short"})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=130), st.binary(min_size=75, max_size=75).map(
    lambda raw: base64.b32encode(raw).decode())))
def test_arbitrary_input_gets_the_gateways_verdict(text: str) -> None:
    try:
        server.verify(text, KEYS)
        accepted = True
    except server.InvalidCode:
        accepted = False
    if accepted:  # pragma: no cover - a random signature that verifies would be news
        client.verify(text, KEYS)
    else:
        with pytest.raises(client.BadCode):
            client.verify(text, KEYS)


def test_the_client_never_imports_the_gateway() -> None:
    root = Path(client.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "gateway" or n.startswith("gateway.") for n in names), f"{path} imports {names}"
