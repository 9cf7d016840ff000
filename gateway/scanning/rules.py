"""What a scanned text is, before any state is consulted (docs/ticket-codes.md, "Verification
steps"; docs/scanning.md, "Result words"). Pure functions: the gateway and the offline clients
follow the same table of cases.

    classify(text, event_id, keys)  ->  Verdict("ticket", serial=..)   signature verified, this event
                                        Verdict("wrong_event", ..)     another event's code (verify it
                                                                       with that event's keys if known)
                                        Verdict("invalid", reason=..)  malformed, unknown version or key,
                                                                       bad signature
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.orders import ticketcodes

# InvalidCode reasons (ticketcodes.py) -> the `reason` words of the API.
REASONS = {
    "not a string": "malformed",
    "wrong length": "malformed",
    "character outside the base32 alphabet": "malformed",
    "not base32": "malformed",
    "unknown version": "unknown_version",
    "unknown key id": "unknown_key",
    "unusable public key": "unknown_key",
    "bad signature": "bad_signature",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str                 # "ticket" | "wrong_event" | "invalid"
    event_id: int | None = None
    serial: int | None = None
    reason: str | None = None  # for "invalid"
    verified: bool = False     # the signature was checked (always for "ticket")


def reason_of(exc: ticketcodes.InvalidCode) -> str:
    return REASONS.get(exc.reason, "malformed")


def classify(text: object, event_id: int, keys: Mapping[int, bytes],
             other_keys: Mapping[int, bytes] | None = None, *, verified: bool = False) -> Verdict:
    """Steps 1-5 of the verification, then the event check.

    `keys`: this event's public keys. `other_keys`: the keys of the event the code names when it is
    another event (None when unknown: the code is then `wrong_event` unverified, as an offline device
    must answer). `verified=True` skips the signature check (the same text verified before)."""
    try:
        claims = ticketcodes.decode(text)  # type: ignore[arg-type]
    except ticketcodes.InvalidCode as exc:
        return Verdict("invalid", reason=reason_of(exc))
    if claims.event_id != event_id:
        if other_keys is None:
            return Verdict("wrong_event", event_id=claims.event_id, serial=claims.serial)
        try:
            ticketcodes.verify(text, other_keys)  # type: ignore[arg-type]
        except ticketcodes.InvalidCode as exc:
            return Verdict("invalid", reason=reason_of(exc))
        return Verdict("wrong_event", event_id=claims.event_id, serial=claims.serial, verified=True)
    if not verified:
        try:
            ticketcodes.verify(text, keys)  # type: ignore[arg-type]
        except ticketcodes.InvalidCode as exc:
            return Verdict("invalid", reason=reason_of(exc))
    return Verdict("ticket", event_id=event_id, serial=claims.serial, verified=True)
