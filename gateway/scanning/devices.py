"""Scanning devices: one token per device, bound to one event and one gate.

A device token is a signed stateless token (gateway/core/tokens.py, kind `d`) carrying the event,
the device id and the gate, so every worker authenticates a device in-process, Redis down or not.
Revocation is a Redis set beside the event's check-in state (`scan:revoked`): the check-in script
reads it in the same atomic call that decides a scan, so a revoked device is refused by every worker
from the moment the revocation answered. Postgres keeps the device (name, gate, the SHA-256 of its
token, when revoked) for the organiser and as the parent row of its scans.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from gateway.core.errors import DomainError
from gateway.core.tokens import TokenSigner
from gateway.organisers import events
from gateway.store.keys import scan_key

GATE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}$")
TOKEN_KIND = "d"


@dataclass(frozen=True, slots=True)
class Device:
    event_id: int
    device_id: str
    gate: str


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms(ms: int | float | None) -> str | None:
    return None if ms is None else iso(datetime.fromtimestamp(ms / 1000, UTC))


def device_not_found(device_id: str) -> DomainError:
    return DomainError("device_not_found", "No such device.", details={"device_id": device_id}, status=404)


def revoked_error(device_id: str) -> DomainError:
    return DomainError("device_revoked", "This scanning device was revoked by the organiser.",
                       details={"device_id": device_id}, status=403)


def check_gate(gate: Any) -> str:
    if not isinstance(gate, str) or not GATE.match(gate):
        raise DomainError("validation_error", "`gate` must be 1-40 letters, digits, spaces, '.', '_' or '-', "
                          "starting with a letter or digit.", details={"gate": gate}, status=422)
    return gate


def check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise DomainError("validation_error", "`name` must be 1-100 printable characters.",
                          details={"name": name}, status=422)
    return name


def _view(row: asyncpg.Record) -> dict[str, Any]:
    return {"device_id": str(row["id"]), "event_id": row["event_id"], "gate": row["gate"], "name": row["name"],
            "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"])}


async def register(conn: asyncpg.Connection | asyncpg.Pool, *, signer: TokenSigner, event_id: int, gate: str,
                   name: str | None) -> dict[str, Any]:
    """Write a device of an event the caller may manage; the answer carries its token."""
    device_id = str(uuid.uuid4())
    token = signer.sign(TOKEN_KIND, {"ev": event_id, "dev": device_id, "g": gate})
    row = await conn.fetchrow(
        """INSERT INTO devices (id, event_id, gate, name, token_hash) VALUES ($1, $2, $3, $4, $5)
           RETURNING *""", uuid.UUID(device_id), event_id, gate, name, hashlib.sha256(token.encode()).digest())
    return {**_view(row), "token": token}


class Devices:
    def __init__(self, *, redis: Redis, prefix: str, signer: TokenSigner) -> None:
        self.redis = redis
        self.prefix = prefix
        self.signer = signer

    def authenticate(self, token: str | None) -> Device:
        """The device of a bearer token (in-process; revocation is checked where the scan is decided)."""
        if not token:
            raise DomainError("unauthorized", "Send the device token as `Authorization: Bearer <token>`.",
                              status=401)
        claims = self.signer.verify(token, TOKEN_KIND)
        try:
            return Device(int(claims["ev"]), str(claims["dev"]), str(claims["g"]))
        except (KeyError, TypeError, ValueError):
            raise DomainError("invalid_token", "The device token is not valid.", status=401) from None

    async def create(self, pool: asyncpg.Pool, *, organisation_id: int, event_id: int, gate: Any,
                     name: Any) -> dict[str, Any]:
        """A new device for `gate`; the answer carries its token, shown this once."""
        gate, name = check_gate(gate), check_name(name)
        await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)  # 404 for others' events
        return await register(pool, signer=self.signer, event_id=event_id, gate=gate, name=name)

    async def list(self, pool: asyncpg.Pool, *, organisation_id: int, event_id: int) -> list[dict[str, Any]]:
        await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)
        rows = await pool.fetch("SELECT * FROM devices WHERE event_id = $1 ORDER BY created_at, id", event_id)
        contact = await self.contacts(event_id)
        out = []
        for row in rows:
            last = contact.get(str(row["id"]))
            out.append({**_view(row), "last_contact_at": iso_ms(last[0]) if last else None,
                        "queue_length": last[1] if last else None})
        return out

    async def revoke(self, pool: asyncpg.Pool, *, organisation_id: int, event_id: int,
                     device_id: str) -> dict[str, Any]:
        """Revoke at once on every worker (Redis first: from this answer on, every scan is refused)."""
        await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)
        try:
            key = uuid.UUID(device_id)
        except ValueError:
            raise device_not_found(device_id) from None
        exists = await pool.fetchval("SELECT 1 FROM devices WHERE id = $1 AND event_id = $2", key, event_id)
        if not exists:
            raise device_not_found(device_id)
        await self.redis.sadd(scan_key(self.prefix, event_id, "revoked"), str(key))
        row = await pool.fetchrow("""UPDATE devices SET revoked_at = COALESCE(revoked_at, now())
                                     WHERE id = $1 AND event_id = $2 RETURNING *""", key, event_id)
        return _view(row)

    async def contacts(self, event_id: int) -> dict[str, tuple[int, int | None, str]]:
        """device id -> (last contact ms, queue length reported or None, gate)."""
        raw = await self.redis.hgetall(scan_key(self.prefix, event_id, "contact"))
        out = {}
        for device, value in raw.items():
            ms, _, rest = value.decode().partition("|")
            queue, _, gate = rest.partition("|")
            out[device.decode()] = (int(ms), int(queue) if queue.isdigit() else None, gate)
        return out
