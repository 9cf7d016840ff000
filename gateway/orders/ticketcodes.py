"""Ticket codes: Ed25519-signed, verifiable offline, short enough for a QR code at a door.

Layout (docs/ticket-codes.md has the details and test vectors):

    version u8 | key_id u16 | event_id u32 | serial u32 | signature 64 bytes   (75 bytes)

all integers big-endian. The signature covers `b"FGTICKET" + the first 11 bytes`.
The 75 bytes are written in RFC 4648 base32 (A-Z, 2-7) without padding: exactly
120 characters, all in the QR alphanumeric set, so the QR code uses alphanumeric
mode and fits version 5 at error correction M.
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = 1
HEADER = struct.Struct(">BHII")  # version, key_id, event_id, serial
SIGNATURE_SIZE = 64
PAYLOAD_SIZE = HEADER.size + SIGNATURE_SIZE  # 75
CODE_LENGTH = PAYLOAD_SIZE * 8 // 5  # 120: 75 bytes are a whole number of base32 blocks
SIGNING_CONTEXT = b"FGTICKET"
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_TO_INT_DIGITS = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghijklmnopqrstuv")


class InvalidCode(ValueError):
    """The code is malformed, has an unknown key id, or its signature does not verify."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid ticket code: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TicketClaims:
    version: int
    key_id: int
    event_id: int
    serial: int


def generate_keypair() -> tuple[bytes, bytes]:
    """A new event key: (32-byte private seed, 32-byte public key)."""
    private = Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_of(private_key: bytes) -> bytes:
    return _private(private_key).public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)


# Key objects are cached: parsing costs more than signing or verifying a short message.
@functools.lru_cache(maxsize=1024)
def _private(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


@functools.lru_cache(maxsize=4096)
def _public(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def encode(*, private_key: bytes, key_id: int, event_id: int, serial: int) -> str:
    """The code of one ticket. Raises ValueError when a field does not fit its width."""
    if not (0 <= key_id <= 0xFFFF and 0 <= event_id <= 0xFFFFFFFF and 0 <= serial <= 0xFFFFFFFF):
        raise ValueError("key_id must fit 16 bits, event_id and serial 32 bits")
    header = HEADER.pack(VERSION, key_id, event_id, serial)
    signature = _private(bytes(private_key)).sign(SIGNING_CONTEXT + header)
    return base64.b32encode(header + signature).decode("ascii")


def _split(code: object) -> tuple[TicketClaims, bytes, bytes]:
    if not isinstance(code, str):
        raise InvalidCode("not a string")
    text = code.strip().upper()
    if len(text) != CODE_LENGTH:
        raise InvalidCode("wrong length")
    if not _ALPHABET.issuperset(text):
        raise InvalidCode("character outside the base32 alphabet")
    # RFC 4648 base32 of exactly 600 bits is the big-endian number written in base 32 with the alphabet
    # A-Z 2-7; int() reads it in C (base64.b32decode is a Python loop: ~20x slower, at every door scan).
    raw = int(text.translate(_TO_INT_DIGITS), 32).to_bytes(PAYLOAD_SIZE, "big")
    header = raw[:HEADER.size]
    version, key_id, event_id, serial = HEADER.unpack(header)
    if version != VERSION:
        raise InvalidCode("unknown version")
    return TicketClaims(version, key_id, event_id, serial), header, raw[HEADER.size:]


def decode(code: str) -> TicketClaims:
    """The claims of a code WITHOUT checking its signature (display, routing). Raises InvalidCode only."""
    return _split(code)[0]


def verify(code: str, public_keys: Mapping[int, bytes]) -> TicketClaims:
    """The claims of a code whose signature verifies with `public_keys[key_id]`. Raises InvalidCode only."""
    claims, header, signature = _split(code)
    try:
        raw_key = public_keys.get(claims.key_id)
    except Exception:  # a Mapping of an unexpected kind must not break the contract
        raw_key = None
    if raw_key is None:
        raise InvalidCode("unknown key id")
    try:
        key = _public(bytes(raw_key))
    except (ValueError, TypeError):
        raise InvalidCode("unusable public key") from None
    try:
        key.verify(signature, SIGNING_CONTEXT + header)
    except InvalidSignature:
        raise InvalidCode("bad signature") from None
    return claims
