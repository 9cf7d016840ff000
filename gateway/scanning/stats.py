"""Organiser figures of the door, per gate: `scan_stats()` (also under `scans` in
`GET /v1/events/{id}/stats`). Read from the counters the check-in script keeps (two hashes, one
round trip), so they are live and cost the same at any number of scans."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.scanning.devices import iso_ms
from gateway.store.keys import scan_key

COUNTERS = {"admitted": "admitted", "duplicate": "duplicates", "invalid": "invalid", "wrong_event": "wrong_event",
            "void": "void", "exited": "exited", "not_inside": "not_inside", "reentered": "reentries",
            "conflict": "conflicts"}


def _gate() -> dict[str, Any]:
    return {name: 0 for name in COUNTERS.values()} | {"devices": []}


async def scan_stats(redis: Redis, prefix: str, event_id: int,
                     names: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Per gate: admitted, duplicates, invalid, wrong_event, void, exited, not_inside, reentries,
    conflicts (offline scans that changed or lost a decision) and its devices (last contact, queue
    length they reported); `inside`: tickets in now (entries minus exits). `names`: device id ->
    name, when the caller has them (Postgres)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(scan_key(prefix, event_id, "stats"))
    pipe.hgetall(scan_key(prefix, event_id, "contact"))
    pipe.smembers(scan_key(prefix, event_id, "revoked"))
    counters, contacts, revoked = await pipe.execute()
    gates: dict[str, dict[str, Any]] = {}
    inside = 0
    for raw_field, raw_value in counters.items():
        field = raw_field.decode()
        if field == "inside":
            inside = int(raw_value)
            continue
        gate, _, counter = field.rpartition("|")
        if counter in COUNTERS and gate:
            gates.setdefault(gate, _gate())[COUNTERS[counter]] = int(raw_value)
    revoked_ids = {d.decode() for d in revoked}
    for raw_device, raw_value in sorted(contacts.items()):
        device = raw_device.decode()
        ms, _, rest = raw_value.decode().partition("|")
        queue, _, gate = rest.partition("|")
        gates.setdefault(gate, _gate())["devices"].append({
            "device_id": device, "name": (names or {}).get(device), "last_contact_at": iso_ms(int(ms)),
            "last_contact_ms": int(ms), "queue_length": int(queue) if queue.isdigit() else None,
            "revoked": device in revoked_ids})
    totals = {name: sum(g[name] for g in gates.values()) for name in COUNTERS.values()}
    return {"event_id": event_id, **totals, "inside": inside, "gates": dict(sorted(gates.items()))}
