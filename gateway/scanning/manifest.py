"""The device manifest (`GET /v1/scan/manifest`) and the re-entry rules it carries.

Sealing a ticket costs a signature (to re-derive its code, ~45 us), an HKDF and an AES-GCM (~10 us):
about 1 s of CPU per 20,000 tickets. A sealed ticket is computed once per worker and also kept in
Redis (`scan:sealed`, serial -> sealed), so the first worker to need it pays, the others read it;
sealing yields to the event loop every `YIELD_EVERY` tickets so scans are not held up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from gateway.core.errors import DomainError
from gateway.orders import ticketcodes
from gateway.orders.tickets import KEY_ID
from gateway.scanning import seal
from gateway.scanning.devices import iso_ms
from gateway.scanning.events import EventScan
from gateway.sale.layout import EventLayout
from gateway.store.keys import scan_key
from gateway.store.cluster import ready_for_transaction

CHUNK = 1000
YIELD_EVERY = 100


async def sealed_tickets(redis: Redis, prefix: str, ev: EventScan, serials: list[int]) -> list[list[Any]]:
    """`[serial, sealed]` for each serial, sealing what neither this worker nor Redis has yet."""
    registry = ev.registry
    missing = [s for s in serials if s not in ev.sealed]
    key = scan_key(prefix, ev.event_id, "sealed")
    for i in range(0, len(missing), CHUNK):
        chunk = missing[i:i + CHUNK]
        cached = await redis.hmget(key, chunk)
        fresh: dict[int, str] = {}
        for serial, blob in zip(chunk, cached):
            if blob is not None:
                ev.sealed[serial] = blob.decode()
                continue
            code = ticketcodes.encode(private_key=ev.private_key, key_id=KEY_ID, event_id=ev.event_id, serial=serial)
            ev.sealed[serial] = fresh[serial] = seal.seal(code, registry.data(registry.tickets[serial]))
            if len(fresh) % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if fresh:
            await redis.hset(key, mapping=fresh)
    return [[s, ev.sealed[s]] for s in serials]


def rules_view(rule_keys: set[str]) -> dict[str, list[str]]:
    return {"ga": sorted(k[3:] for k in rule_keys if k.startswith("ga:")),
            "sections": sorted(k[4:] for k in rule_keys if k.startswith("sec:"))}


async def manifest(*, redis: Redis, prefix: str, ev: EventScan, device_id: str, gate: str,
                   since: int | None) -> dict[str, Any]:
    full, serials, revoked = ev.registry.changes(since)
    tickets = await sealed_tickets(redis, prefix, ev, serials)
    return {"event_id": ev.event_id, "event_name": ev.name, "device_id": device_id, "gate": gate,
            "version": ev.registry.version, "full": full,
            "keys": [{"key_id": k, "public_key": v.hex()} for k, v in sorted(ev.keys.items())],
            "revoked": revoked, "tickets": tickets, "reentry": rules_view(ev.rules), "seal": seal.SCHEME,
            "generated_at": iso_ms(time.time() * 1000)}


def rule_keys(layout: EventLayout, body: Any) -> set[str]:
    """The rule keys of a `PUT /scan-rules` body, checked against the event's types and sections."""
    if not isinstance(body, dict) or set(body) != {"reentry"} or not isinstance(body["reentry"], dict) \
            or set(body["reentry"]) - {"ga", "sections"}:
        raise DomainError("validation_error", 'Send {"reentry": {"ga": [type codes], "sections": [names]}}.',
                          status=422)
    out: set[str] = set()
    for field, known, prefix in (("ga", set(layout.ga), "ga:"), ("sections", set(layout.section_names), "sec:")):
        names = body["reentry"].get(field, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DomainError("validation_error", f"`reentry.{field}` must be a list of names.", status=422)
        unknown = sorted(set(names) - known)
        if unknown:
            raise DomainError("validation_error", f"`reentry.{field}` names what this event does not have: "
                              f"{', '.join(unknown)}.", details={"unknown": unknown, "known": sorted(known)},
                              status=422)
        out |= {prefix + n for n in names}
    return out


async def set_rules(redis: Redis, prefix: str, event_id: int, keys: set[str]) -> None:
    await ready_for_transaction(redis)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(scan_key(prefix, event_id, "rules"))
    if keys:
        pipe.hset(scan_key(prefix, event_id, "rules"), mapping={k: "1" for k in sorted(keys)})
    await pipe.execute()


async def get_rules(redis: Redis, prefix: str, event_id: int) -> set[str]:
    raw = await redis.hgetall(scan_key(prefix, event_id, "rules"))
    return {k.decode() for k, v in raw.items() if v == b"1"}
