"""Per-worker scanning state of each event: keys, tickets (registry), the copies degraded mode
needs (revoked devices, re-entry rules), loaded from Redis once and kept current by catch-ups.

Nothing here is a source of truth: the check-in script decides every online scan with the state in
Redis. These copies answer what can be answered without Redis (signature, event, seat and holder),
and everything in degraded mode.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.core.errors import DomainError
from gateway.core.sealing import Sealer, event_context
from gateway.core.singleflight import SingleFlight
from gateway.orders.tickets import KEY_ID
from gateway.sale.layout import EventLayout
from gateway.scanning.registry import PAGE, TicketRegistry
from gateway.store.keys import event_key, scan_key
from gateway.store.cluster import ready_for_transaction

OTHER_KEYS_TTL_S = 60.0


@dataclass
class EventScan:
    event_id: int
    name: str
    keys: dict[int, bytes]
    private_key: bytes
    registry: TicketRegistry
    sealed: dict[int, str] = field(default_factory=dict)   # serial -> sealed ticket data (manifest)
    revoked: set[str] = field(default_factory=set)          # degraded mode's copy
    rules: set[str] = field(default_factory=set)            # degraded mode's copy: re-entry rule keys
    used: float = field(default_factory=time.monotonic)
    version: bytes | None = None  # the event's meta version at the last catch-up (see _catch_up_once)


def not_ready(event_id: int) -> DomainError:
    return DomainError("not_on_sale", "This event was never opened: it has no tickets to scan yet.",
                       details={"event_id": event_id}, status=409)


class EventCache:
    def __init__(self, *, redis: Redis, prefix: str, sealer: Sealer) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sealer = sealer
        self.events: dict[int, EventScan] = {}
        self._load = SingleFlight(self._loader)
        self._catch_up = SingleFlight(self._catch_up_once)
        self._others: dict[int, tuple[float, dict[int, bytes] | None]] = {}

    def peek(self, event_id: int) -> EventScan | None:
        return self.events.get(event_id)

    async def get(self, event_id: int) -> EventScan:
        ev = self.events.get(event_id)
        if ev is None:
            ev = await self._load(event_id)
        ev.used = time.monotonic()
        return ev

    async def _loader(self, event_id: int) -> EventScan:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(event_key(self.prefix, event_id, "info"))
        pipe.get(event_key(self.prefix, event_id, "layout"))
        pipe.smembers(scan_key(self.prefix, event_id, "revoked"))
        pipe.hgetall(scan_key(self.prefix, event_id, "rules"))
        info, layout, revoked, rules = await pipe.execute()
        if not info or layout is None:
            raise not_ready(event_id)
        ev = EventScan(event_id=event_id, name=info[b"name"].decode(), keys={KEY_ID: bytes(info[b"signing_public"])},
                       private_key=self.sealer.unseal(info[b"signing_private"], context=event_context(event_id)),
                       registry=TicketRegistry(EventLayout.from_json(layout)),
                       revoked={d.decode() for d in revoked}, rules={k.decode() for k, v in rules.items() if v == b"1"})
        await self._catch_up_once(event_id, ev)
        self.events[event_id] = ev
        return ev

    async def catch_up(self, ev: EventScan) -> None:
        """Fold the ledger entries after the last one seen (concurrent callers share one read)."""
        await self._catch_up(ev.event_id)

    async def _catch_up_once(self, event_id: int, ev: EventScan | None = None) -> None:
        """Every sale and refund bumps the event's `version` in the same script as its ledger entry, so
        reading the version and the stream's last id in one MULTI tells whether anything but scans
        (and holds) was appended since the last look: at the door, usually not, and the scan entries
        in between are skipped without being read."""
        ev = ev or self.events[event_id]
        stream = event_key(self.prefix, event_id, "ledger")
        await ready_for_transaction(self.redis)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(event_key(self.prefix, event_id, "meta"), "version")
        pipe.xrevrange(stream, count=1)
        version, last = await pipe.execute()
        end = last[0][0] if last else b"0-0"
        if version is None or version != ev.version:
            while True:
                entries = await self.redis.xrange(stream, min=b"(" + ev.registry.last_id, max=end, count=PAGE)
                ev.registry.fold(entries)
                if len(entries) < PAGE:
                    break
                await asyncio.sleep(0)  # a long stream: let the scans in between
            ev.version = version
        if _sid(end) > _sid(ev.registry.last_id):
            ev.registry.last_id = end

    async def refresh(self, ev: EventScan) -> None:
        """The degraded-mode copies: revoked devices and re-entry rules (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(scan_key(self.prefix, ev.event_id, "revoked"))
        pipe.hgetall(scan_key(self.prefix, ev.event_id, "rules"))
        revoked, rules = await pipe.execute()
        ev.revoked = {d.decode() for d in revoked}
        ev.rules = {k.decode() for k, v in rules.items() if v == b"1"}

    def active(self, within_s: float = 900.0) -> list[EventScan]:
        now = time.monotonic()
        return [ev for ev in self.events.values() if now - ev.used < within_s]

    async def other_keys(self, event_id: int) -> dict[int, bytes] | None:
        """The public keys of another event (to tell `wrong_event` from a forgery); {} when no such
        event exists; None when Redis cannot say."""
        now = time.monotonic()
        hit = self._others.get(event_id)
        if hit is not None and now - hit[0] < OTHER_KEYS_TTL_S:
            return hit[1]
        try:
            raw = await self.redis.hget(event_key(self.prefix, event_id, "info"), "signing_public")
        except RedisError:
            return None
        keys: dict[int, bytes] = {KEY_ID: bytes(raw)} if raw else {}
        if len(self._others) > 10_000:
            self._others.clear()
        self._others[event_id] = (now, keys)
        return keys


def _sid(stream_id: bytes) -> tuple[int, int]:
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)
