"""The door rules a device applies by itself when the gateway cannot be reached.

The gateway's order (docs/scanning.md): the code's form, the gate's event, the
signature, the revocation list, the ticket's manifest entry, then first scan
wins against what this device has seen. An offline answer is provisional: the
gateway decides again when the queue is uploaded (the earliest scan of a
ticket anywhere wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scanner_app.codes import BadCode, Claims, check_signature, decode
from scanner_app.manifest import Manifest, NotThisTicket, TicketInfo

ADMITTED, DUPLICATE, INVALID, WRONG_EVENT, VOID, EXITED, NOT_INSIDE = (
    "admitted", "duplicate", "invalid", "wrong_event", "void", "exited", "not_inside")
# The client's refusal reasons in the contract's words.
REASONS = {"wrong length": "malformed", "character outside the base32 alphabet": "malformed",
           "not base32": "malformed", "unknown version": "unknown_version", "unknown key id": "unknown_key",
           "unusable public key": "unknown_key", "bad signature": "bad_signature"}


@dataclass(frozen=True, slots=True)
class Verdict:
    result: str
    claims: Claims | None = None
    reason: str | None = None
    info: TicketInfo | None = None
    reentry: bool = False


def decide(code: object, *, manifest: Manifest, seen: Callable[[int], bool | None],
           direction: str = "in") -> Verdict:
    """What the door answers for `code` offline.

    `seen(serial)` is None for a ticket this device never admitted, else whether it is inside now.
    """
    try:
        claims, raw = decode(code)
    except BadCode as exc:
        return Verdict(INVALID, None, REASONS.get(exc.reason, "malformed"))
    if claims.event_id != manifest.event_id:
        return Verdict(WRONG_EVENT, claims)  # unverified: a device holds only its own event's keys
    try:
        check_signature(claims, raw, manifest.keys)
    except BadCode as exc:
        return Verdict(INVALID, None, REASONS.get(exc.reason, "malformed"))
    if claims.serial in manifest.revoked:
        return Verdict(VOID, claims)
    try:
        info = manifest.info(str(code), claims.serial)
    except NotThisTicket:
        return Verdict(INVALID, claims, "not_issued")
    # A serial the manifest does not list yet was issued after this device's last fetch (only the
    # event's key can sign it): admitted here, decided again by the gateway at upload.
    note = None if info is not None else "not in this device's manifest yet"
    reentry = manifest.allows_reentry(info)
    inside = seen(claims.serial)
    if direction == "out":
        return Verdict(EXITED if inside else NOT_INSIDE, claims, note, info, reentry)
    if inside is None:
        return Verdict(ADMITTED, claims, note, info, reentry)
    if not inside and reentry:
        return Verdict(ADMITTED, claims, "re-entry", info, reentry)
    return Verdict(DUPLICATE, claims, note, info, reentry)
