"""Ticket codes as a door device reads them (format: docs/ticket-codes.md).

The device checks a code's Ed25519 signature with the public keys of its
manifest, so it can answer at the door without the gateway. This module is
written apart from the gateway's (the client never imports `gateway`); a
parity test runs one table of codes through both.
"""

from __future__ import annotations

import base64
import binascii
import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERSION = 1
HEADER = struct.Struct(">BHII")  # version, key_id, event_id, serial
CODE_LENGTH = 120  # 75 bytes in unpadded base32
SIGNING_CONTEXT = b"FGTICKET"
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class BadCode(ValueError):
    """The code is malformed, signed with an unknown key, or its signature does not verify."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid ticket code: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    key_id: int
    event_id: int
    serial: int


def normalise(code: object) -> str:
    """The code as printed: upper case, no surrounding whitespace (wedge scanners add both)."""
    return code.strip().upper() if isinstance(code, str) else ""


@functools.lru_cache(maxsize=64)
def _key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def decode(code: object) -> tuple[Claims, bytes]:
    """Steps 1-3 (docs/ticket-codes.md): the claims WITHOUT the signature check, and the raw bytes."""
    text = normalise(code)
    if len(text) != CODE_LENGTH:
        raise BadCode("wrong length")
    if not _ALPHABET.issuperset(text):
        raise BadCode("character outside the base32 alphabet")
    try:
        raw = base64.b32decode(text)
    except (binascii.Error, ValueError):  # pragma: no cover - excluded by the checks above
        raise BadCode("not base32") from None
    version, key_id, event_id, serial = HEADER.unpack_from(raw)
    if version != VERSION:
        raise BadCode("unknown version")
    return Claims(key_id, event_id, serial), raw


def check_signature(claims: Claims, raw: bytes, public_keys: Mapping[int, bytes]) -> None:
    """Steps 4-5: BadCode unless `public_keys[key_id]` verifies the signature."""
    public = public_keys.get(claims.key_id)
    if public is None:
        raise BadCode("unknown key id")
    try:
        key = _key(bytes(public))
    except (ValueError, TypeError):
        raise BadCode("unusable public key") from None
    try:
        key.verify(raw[HEADER.size:], SIGNING_CONTEXT + raw[:HEADER.size])
    except InvalidSignature:
        raise BadCode("bad signature") from None


def verify(code: object, public_keys: Mapping[int, bytes]) -> Claims:
    """The claims of a code whose signature verifies with `public_keys[key_id]`; else BadCode."""
    claims, raw = decode(code)
    check_signature(claims, raw, public_keys)
    return claims
