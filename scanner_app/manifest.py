"""The manifest a device scans offline with (docs/scanning.md, `GET /v1/scan/manifest`).

It holds the event's public keys, the revoked serials, the scan rules (which
sections and general-admission types allow re-entry) and, per ticket, its seat
and holder sealed under a key derived from that ticket's own code: readable
only once the code is scanned, so a lost device leaks nothing readable.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from scanner_app.codes import normalise

SEAL = "hkdf-sha256/aes-256-gcm/v1"
SEAL_SALT, SEAL_INFO = b"flashgate-seal-v1", b"ticket"
NONCE = 12


class ManifestError(ValueError):
    """The gateway sent a manifest this client cannot use (unknown seal, malformed fields)."""


class NotThisTicket(ValueError):
    """The sealed data does not open with this code: the code is not that ticket's."""


@dataclass(frozen=True, slots=True)
class TicketInfo:
    seat: str | None
    section: str | None
    type: str | None
    holder: str | None


def seal_key(code: str) -> bytes:
    """The 32-byte AES key of a ticket's sealed data, derived from its (normalised) code."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SEAL_SALT, info=SEAL_INFO).derive(
        normalise(code).encode("ascii"))


def open_sealed(code: str, sealed: str) -> TicketInfo:
    """Seat, section, type and holder of a ticket; NotThisTicket when `code` does not open `sealed`."""
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    except (binascii.Error, ValueError):
        raise NotThisTicket("sealed data is not base64url") from None
    if len(raw) < NONCE + 16:
        raise NotThisTicket("sealed data too short")
    try:
        plain = AESGCM(seal_key(code)).decrypt(raw[:NONCE], raw[NONCE:], None)
        data = json.loads(plain)
    except (InvalidTag, ValueError, UnicodeError):
        raise NotThisTicket("sealed data does not open with this code") from None
    if not isinstance(data, dict):
        raise NotThisTicket("sealed data is not an object")
    text = lambda k: data.get(k) if isinstance(data.get(k), str) else None  # noqa: E731
    return TicketInfo(text("seat"), text("section"), text("type"), text("holder"))


@dataclass(slots=True)
class Manifest:
    event_id: int
    gate: str
    version: int
    keys: dict[int, bytes]
    revoked: set[int] = field(default_factory=set)
    tickets: dict[int, str] = field(default_factory=dict)
    reentry_ga: frozenset[str] = frozenset()
    reentry_sections: frozenset[str] = frozenset()
    event_name: str = ""
    device_id: str = ""

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Manifest:
        """A manifest from a full answer (or from what the device stored)."""
        try:
            seal = body.get("seal", SEAL)
            if seal != SEAL:
                raise ManifestError(f"unknown seal {seal!r}")
            m = cls(event_id=int(body["event_id"]), gate=str(body["gate"]), version=int(body["version"]),
                    keys={int(k["key_id"]): bytes.fromhex(k["public_key"]) for k in body["keys"]},
                    event_name=str(body.get("event_name") or ""), device_id=str(body.get("device_id") or ""))
            m._apply(body, full=True)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {exc!r}") from None
        return m

    def _apply(self, body: dict[str, Any], *, full: bool) -> None:
        tickets = {int(serial): str(sealed) for serial, sealed in body.get("tickets", [])}
        revoked = {int(s) for s in body.get("revoked", [])}
        if full:
            self.tickets, self.revoked = tickets, revoked
        else:
            self.tickets.update(tickets)
            self.revoked |= revoked
        rules = body.get("reentry") or {}
        self.reentry_ga = frozenset(map(str, rules.get("ga", [])))
        self.reentry_sections = frozenset(map(str, rules.get("sections", [])))

    def merge(self, body: dict[str, Any]) -> Manifest:
        """Apply an answer to `?since=<version>`: a full one replaces, a partial one adds."""
        if body.get("full", True) or int(body["event_id"]) != self.event_id:
            return Manifest.parse(body)
        try:
            self.version = int(body["version"])
            if "keys" in body:
                self.keys = {int(k["key_id"]): bytes.fromhex(k["public_key"]) for k in body["keys"]}
            self.gate = str(body.get("gate", self.gate))
            self._apply(body, full=False)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from None
        return self

    def info(self, code: str, serial: int) -> TicketInfo | None:
        """The ticket's sealed data opened with its code; None when the manifest has no entry for it.
        Raises NotThisTicket when the entry does not open with this code."""
        sealed = self.tickets.get(serial)
        return None if sealed is None else open_sealed(code, sealed)

    def allows_reentry(self, info: TicketInfo | None) -> bool:
        if info is None:
            return False
        return (info.type is not None and info.type in self.reentry_ga) or (
            info.type is None and info.section is not None and info.section in self.reentry_sections)
