"""Sealing: authenticated encryption of small secrets kept in Redis.

An event's Ed25519 ticket-signing key must sit in Redis (checkout signs ticket
codes without Postgres), but a Redis dump, replica or backup must not let anyone
mint tickets. So the key is stored *sealed*: encrypted and authenticated with
AES-256-GCM under a key derived from the application secret
(`FLASHGATE_SECRET_KEY`, `Settings.secret_bytes`), which never goes to Redis.

Key derivation: HKDF-SHA256 over the secret with the fixed label `HKDF_INFO`,
so this key is independent of every other use of the same secret (the token
HMAC key is derived differently). Changing the label or the secret makes every
blob already in Redis unreadable; see "Rotation" below.

Blob layout (version 1), stored as raw bytes in the Redis hash field:

    version u8 (0x01) | nonce 12 bytes (random) | ciphertext | tag 16 bytes

The associated data is the version byte followed by `context`, a caller-chosen
label naming where the value belongs (`event_context(42)` is `b"event:42"`).
A blob therefore only opens for the same context: a sealed key copied to
another event's hash does not unseal there. `unseal` raises `SealError` for a
malformed blob, an unknown version, or one that does not authenticate
(tampered, other context, or other secret; GCM cannot tell these apart).

Nonces are random 96-bit values; with one key per deployment and a handful of
seals per event, the 2**-32 collision bound is nowhere near.

Rotation: a blob opens only with the secret that sealed it. After changing
`FLASHGATE_SECRET_KEY`, every worker must use the new secret and the sealed
fields must be rewritten from Postgres (the source of truth); every process
must share one secret (a development secret is kept under the data directory).

Cost: one HKDF when a `Sealer` is built; a seal or unseal of a 32-byte key takes
a few microseconds. The module keeps no state: callers hold a `Sealer` (or
build one) and cache what they unseal.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
HKDF_INFO = b"flashgate/redis-signing-key/v1"
KEY_SIZE = 32    # AES-256
NONCE_SIZE = 12  # 96 bits, the GCM standard nonce
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE  # 29 bytes added to the plaintext

_VERSION_BYTE = bytes([VERSION])


class SealError(ValueError):
    """A sealed blob cannot be opened.

    `reason` is one of `"malformed"` (not bytes of a possible length),
    `"unknown_version"` or `"unauthentic"` (tampered, sealed for another
    context, or sealed with another secret).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"cannot unseal: {message}")
        self.reason = reason


def event_context(event_id: int) -> bytes:
    """The context an event's sealed values are bound to: `b"event:<id>"`."""
    return b"event:%d" % event_id


def event_webhook_context(event_id: int) -> bytes:
    """The context of an event's sealed webhook secret in its Redis info: `b"event:<id>:webhook"`."""
    return event_context(event_id) + b":webhook"


def webhook_context(org_id: int | str | None) -> bytes:
    """The context of an organisation's sealed webhook secrets: `b"webhook:org:<id>"`."""
    return b"webhook:org:" + str(org_id if org_id is not None else "").encode()


class Sealer:
    """Seals and unseals small values with a key derived from the application secret."""

    __slots__ = ("_aead",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)):
            raise TypeError("the secret must be bytes (Settings.secret_bytes)")
        if not secret:
            raise ValueError("the secret must not be empty")
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=HKDF_INFO).derive(bytes(secret))
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<secret>)"

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes:
        """`plaintext` encrypted and bound to `context`; a fresh random nonce every call."""
        nonce = os.urandom(NONCE_SIZE)
        return _VERSION_BYTE + nonce + self._aead.encrypt(nonce, plaintext, _VERSION_BYTE + context)

    def unseal(self, blob: bytes, *, context: bytes) -> bytes:
        """The plaintext of a blob made by `seal` with the same secret and `context`; else `SealError`."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise SealError("malformed", f"expected bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) < OVERHEAD:
            raise SealError("malformed", f"{len(blob)} bytes is shorter than the {OVERHEAD}-byte minimum")
        if blob[0] != VERSION:
            raise SealError("unknown_version", f"unknown version {blob[0]:#04x}")
        try:
            return self._aead.decrypt(blob[1:1 + NONCE_SIZE], blob[1 + NONCE_SIZE:], _VERSION_BYTE + context)
        except InvalidTag:
            raise SealError("unauthentic", "the blob does not authenticate (tampered, sealed for another "
                                           "context, or sealed with another secret key)") from None
