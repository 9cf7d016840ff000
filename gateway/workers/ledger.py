"""Ledger worker: Redis ledger streams -> Postgres, in batches, exactly once in effect.

Writing. Per event, read the ledger stream with the consumer group `ledger` (up
to `ledger_batch` = 1,000 entries per read), write the batch in ONE Postgres
transaction with idempotent inserts (ON CONFLICT DO NOTHING on deterministic
ids), then XACK. Entries are acknowledged only after the commit, so a Postgres
outage or a worker crash loses nothing: unacknowledged entries stay pending and
are written on the next try, or claimed (XAUTOCLAIM) by another consumer once
idle for `ledger_claim_idle_ms`. An entry Postgres can never take is
dead-lettered; a sale whose tickets collide with another order's (Redis came back
with older data) is written without them and refunded (gateway/orders/conflicts.py).
A process runs `ledger_consumers` (2) consumers.

Which events. The work is proportional to the events that have something to
write, not to every event that ever sold:

- The polled set is `ledger_dirty_set` (keys.py): every producer SADDs the event
  right AFTER its XADD (Checkout._confirm after the `confirm` script,
  refund_order after `void`, refund_orphan after its XADD). The scripts cannot
  do it themselves: a script only touches its event's `{ev:<id>}` slot (Cluster).
  A tick is SMEMBERS of that set plus one XREADGROUP `>` per member, pipelined.
  Idle, the tick interval doubles from 20 ms up to `ledger_idle_poll_s` (0.2 s).
- Every `ledger_round_s` (5 s) the housekeeping consumer (one per process)
  SADDs the on-sale events (`on_sale_set`), runs XAUTOCLAIM on every polled
  event, continuing from that event's cursor (kept between rounds; a page that
  claimed entries is continued on the next tick), and prunes: an event leaves the
  set once its stream has no pending and no undelivered entry and it is not on
  sale. Pruning is SREM, then the same check again, and SADD back if an entry
  arrived meanwhile: a producer's XADD that came before the SREM is seen by the
  second check, one that came after is followed by its own SADD; so an event with
  an unwritten entry is never left out of the set.
- Safety net for a producer that died between its XADD and its SADD: on start
  the housekeeping consumer checks every event of `ledger_set` once (SSCAN +
  XINFO GROUPS, pipelined) and marks those with pending or undelivered entries;
  and every round a background scrub checks `ledger_scrub_batch` (10) more
  events of `ledger_set`, round-robin. On-sale events are marked every round in
  any case. A retried refund or checkout marks again (the replay SADDs too).

So the idle cost is a handful of commands per tick for the live events plus
about `ledger_scrub_batch` + 5 commands per round, whatever the number of past
events; only the one-off start pass reads them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import asyncpg
import orjson
from redis.exceptions import ResponseError

from gateway.core.runtime import Runtime
from gateway.orders import conflicts
from gateway.orders.tickets import ticket_id_hex
from gateway.store.keys import LEDGER_GROUP, event_key, ledger_dirty_set, ledger_set, on_sale_set

log = logging.getLogger("flashgate.ledger")

POLL_S = 0.02  # tick interval right after work; doubles while idle up to settings.ledger_idle_poll_s
RECOVER_CHUNK = 500  # events per pipelined XINFO GROUPS in the start pass


def payment_uuid(order_id: str, kind: str) -> str:
    return hashlib.md5(f"{order_id}|{kind}|payment".encode()).hexdigest()


def _ts(ms: int | float | None) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp((ms or time.time() * 1000) / 1000, UTC)


class LedgerWriter:
    """Turns decoded ledger entries of one event into idempotent SQL, in stream order."""

    def __init__(self, conn: asyncpg.Connection, event_id: int) -> None:
        self.conn = conn
        self.event_id = event_id
        self.orders: list[tuple] = []
        self.payments: list[tuple] = []
        self.tickets: list[tuple] = []
        self.scans: list[tuple] = []
        self.stream_ids: dict[str, str] = {}  # order id -> its entry, for a refused sale's record
        self.refused = 0  # orders Postgres refused (conflicts.refuse)

    async def add(self, stream_id: str, kind: str, data: dict[str, Any], extra: dict[str, Any]) -> None:
        if kind == "order":
            self.stream_ids[str(data.get("order_id"))] = stream_id
            self._order(data, extra)
        elif kind == "void":
            await self.flush()  # a void must follow the sale it undoes
            await self._void(data, extra)
        elif kind == "orphan_refund":
            self._orphan(data)
        elif kind == "scan":
            await self._scan(data)

    def _order(self, d: dict[str, Any], o: dict[str, Any]) -> None:
        order_id = d["order_id"]
        at = d.get("confirmed_at_ms") or int(time.time() * 1000)  # ms; to_timestamp() in SQL
        currency = o.get("currency") or "XXX"
        self.orders.append((order_id, self.event_id, d["hold_id"], d["buyer"], o.get("email"), "paid",
                            int(o.get("amount_minor") or 0), currency, o.get("idempotency_key"), at))
        if o.get("payment_id"):
            self.payments.append((payment_uuid(order_id, "capture"), order_id, d["hold_id"],
                                  o.get("provider") or "simulator", o["payment_id"], "capture",
                                  int(o.get("amount_minor") or 0), currency, "succeeded", at))
        seats = d.get("seats") or []
        ga = d.get("ga") or {}
        kinds = [(s, None) for s in seats]
        for code in sorted(ga):
            kinds += [(None, code)] * int(ga[code])
        for i, (seat, ga_type) in enumerate(kinds):
            serial = int(d["serial_start"]) + i
            self.tickets.append((ticket_id_hex(order_id, serial), order_id, self.event_id, serial, seat, ga_type,
                                 at))

    def _orphan(self, d: dict[str, Any]) -> None:
        at = d.get("at_ms") or int(time.time() * 1000)
        for kind, ref in (("capture", d["payment_id"]), ("refund", d.get("refund_id") or f"{d['payment_id']}:r")):
            self.payments.append((payment_uuid(d["order_id"], kind), None, d["hold_id"],
                                  d.get("provider") or "simulator", ref, kind,
                                  int(d["amount_minor"]), d.get("currency") or "XXX", "succeeded", at))

    async def _void(self, d: dict[str, Any], o: dict[str, Any]) -> None:
        order_id = uuid.UUID(d["order_id"])
        at = _ts(d.get("voided_at_ms"))
        await self.conn.execute("UPDATE orders SET status = 'refunded', refunded_at = $2 WHERE id = $1 "
                                "AND status = 'paid'", order_id, at)
        await self.conn.execute("UPDATE tickets SET status = 'void', voided_at = $2 WHERE order_id = $1 "
                                "AND status = 'valid'", order_id, at)
        if o.get("refund_id"):
            await self.conn.execute(
                """INSERT INTO payments (id, order_id, hold_id, provider, provider_ref, kind, amount_minor, currency,
                                         status, created_at)
                   SELECT $1::uuid, o.id, o.hold_id,
                          COALESCE($6::text, (SELECT p.provider FROM payments p WHERE p.order_id = o.id
                                              AND p.kind = 'capture' LIMIT 1), 'simulator'),
                          $2, 'refund', $3, o.currency, 'succeeded', $4
                   FROM orders o WHERE o.id = $5 ON CONFLICT DO NOTHING""",
                payment_uuid(d["order_id"], "refund"), o["refund_id"], int(o.get("amount_minor") or 0), at, order_id,
                o.get("provider") or None)

    async def _scan(self, d: dict[str, Any]) -> None:
        """A door scan (lua/scan_checkin.lua). An offline scan that admitted a ticket before its
        admitting scan `demote`s that one to a duplicate first (at most one admitted row per ticket)."""
        if d.get("demote"):
            await self.flush()  # the demoted scan is an earlier entry: written before it changes
            await self.conn.execute("UPDATE scans SET result = 'duplicate', conflict = true WHERE id = $1 "
                                    "AND result = 'admitted'", uuid.UUID(d["demote"]))
        serial = d.get("serial")
        self.scans.append((d["scan_id"], self.event_id, d.get("ticket_id") or None, d["device_id"],
                           str(d["device_scan_id"]), d["gate"], d["result"],
                           d.get("scanned_at_ms") or int(time.time() * 1000), d.get("mode") or "online",
                           d.get("direction") or "in", d.get("local_result"), bool(d.get("conflict")),
                           d.get("reason"), serial if isinstance(serial, int) else None))

    async def flush(self) -> None:
        if self.orders:
            cols = list(zip(*self.orders))
            await self.conn.execute(
                """INSERT INTO orders (id, event_id, hold_id, buyer, email, status, total_minor, currency,
                                       idempotency_key, paid_at, created_at)
                   SELECT i, e, h, b, m, s, t, c, k, to_timestamp(a / 1000.0), to_timestamp(a / 1000.0)
                   FROM unnest($1::text[]::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::bigint[], $8::text[], $9::text[], $10::float8[])
                        AS u(i, e, h, b, m, s, t, c, k, a)
                   ON CONFLICT DO NOTHING""", *cols)
        if self.payments:
            cols = list(zip(*self.payments))
            await self.conn.execute(
                """INSERT INTO payments (id, order_id, hold_id, provider, provider_ref, kind, amount_minor, currency,
                                         status, created_at)
                   SELECT i, o, h, p, r, k, m, c, s, to_timestamp(a / 1000.0)
                   FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::bigint[], $8::text[], $9::text[], $10::float8[])
                        AS u(i, o, h, p, r, k, m, c, s, a)
                   ON CONFLICT DO NOTHING""", *cols)
        if self.tickets:  # a ticket colliding with another order's refuses its whole order
            taken = await conflicts.refuse(self.conn, self.event_id, self.tickets, self.stream_ids)
            self.refused += len({t[1] for t in self.tickets}) - len({t[1] for t in taken})
            self.tickets[:] = taken
        if self.tickets:
            cols = list(zip(*self.tickets))
            await self.conn.execute(
                """INSERT INTO tickets (id, order_id, event_id, serial, seat_index, ticket_type, created_at)
                   SELECT i, o, e, s, x, t, to_timestamp(a / 1000.0)
                   FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::bigint[], $4::int[], $5::int[],
                               $6::text[], $7::float8[]) AS u(i, o, e, s, x, t, a)
                   ON CONFLICT DO NOTHING""", *cols)
        if self.scans:  # after the tickets they reference
            cols = list(zip(*self.scans))
            await self.conn.execute(
                """INSERT INTO scans (id, event_id, ticket_id, device_id, device_scan_id, gate, result, scanned_at,
                                      mode, direction, local_result, conflict, reason, serial)
                   SELECT i, e, t, d, s, g, r, to_timestamp(a / 1000.0), m, w, l, c, n, x
                   FROM unnest($1::text[]::uuid[], $2::bigint[], $3::text[]::uuid[], $4::text[]::uuid[], $5::text[],
                               $6::text[], $7::text[], $8::float8[], $9::text[], $10::text[], $11::text[],
                               $12::bool[], $13::text[], $14::int[]) AS u(i, e, t, d, s, g, r, a, m, w, l, c, n, x)
                   ON CONFLICT DO NOTHING""", *cols)
        self.orders.clear()
        self.payments.clear()
        self.tickets.clear()
        self.scans.clear()


def decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, str, dict, dict, str]]:
    out = []
    for entry_id, fields in entries:
        sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        kind = fields[b"k"].decode()
        raw_d, raw_o = fields[b"d"], fields.get(b"o") or b"{}"
        data = orjson.loads(raw_d)
        extra = orjson.loads(raw_o)
        raw = b'{"d":' + raw_d + b',"o":' + raw_o + b"}"  # the entry as Redis had it, not re-encoded
        out.append((sid, kind, data if isinstance(data, dict) else {}, extra if isinstance(extra, dict) else {},
                    raw.decode()))
    return out


async def write_batch(pool: asyncpg.Pool, event_id: int, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
    """Write a batch in one transaction; returns how many of its orders Postgres refused."""
    decoded = decode(entries)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO ledger_entries (event_id, stream_id, kind, payload)
               SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[]::json[]) ON CONFLICT DO NOTHING""",
            event_id, [d[0] for d in decoded], [d[1] for d in decoded], [d[4] for d in decoded])
        writer = LedgerWriter(conn, event_id)
        for sid, kind, data, extra, _ in decoded:
            await writer.add(sid, kind, data, extra)
        await writer.flush()
    return writer.refused


class LedgerWorker:
    """One consumer of the `ledger` group. The housekeeping consumer (one per process) also runs the
    start pass and, every `ledger_round_s`, the on-sale marks, XAUTOCLAIM, pruning and the scrub."""

    def __init__(self, runtime: Runtime, consumer: str | None = None, *, housekeeping: bool = True,
                 provider: Any = None) -> None:
        settings = runtime.settings
        self.provider = provider  # refunds of refused sales (conflicts.settle); built on first need
        self.runtime = runtime
        self.redis = runtime.redis
        self.prefix = settings.redis_prefix
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.housekeeping = housekeeping
        self.batch = max(1, settings.ledger_batch)
        self.claim_idle_ms = settings.ledger_claim_idle_ms
        self.round_s = settings.ledger_round_s
        self.idle_poll_s = max(POLL_S, settings.ledger_idle_poll_s)
        self.scrub_batch = max(1, settings.ledger_scrub_batch)
        self.dirty = ledger_dirty_set(self.prefix)
        self.written = 0
        self._started = False
        self._last_round = float("-inf")
        self._ready: set[int] = set()           # events whose consumer group this consumer made sure of
        self._own: set[int] = set()             # events where this consumer may hold unacknowledged entries
        self._cursor: dict[int, bytes | str] = {}  # XAUTOCLAIM cursor per event, kept between rounds
        self._claim_now: set[int] = set()       # the last XAUTOCLAIM page claimed entries and more is left
        self._scrub_cursor = 0
        self._scrub_queue: list[int] = []

    def _stream(self, event_id: int) -> str:
        return event_key(self.prefix, event_id, "ledger")

    async def _group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, LEDGER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _pipelined(self, calls: list[tuple[str, tuple, dict]]) -> list[Any]:
        """Run commands in one round trip; a command's error is returned in its place."""
        if not calls:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name, args, kwargs in calls:
            getattr(pipe, name)(*args, **kwargs)
        return await pipe.execute(raise_on_error=False)

    async def step(self) -> int:
        """One tick over the polled (dirty) events; returns how many entries were written."""
        pool = await self.runtime.pg()
        first = not self._started
        if first and self.housekeeping:
            await self.recover()
        self._started = True
        now = time.monotonic()
        housekeep = self.housekeeping and now - self._last_round >= self.round_s
        on_sale: set[int] = set()
        if housekeep:
            self._last_round = now
            on_sale = {int(x) for x in await self.redis.smembers(on_sale_set(self.prefix))}
            if on_sale:
                await self.redis.sadd(self.dirty, *on_sale)
        events = sorted(int(x) for x in await self.redis.smembers(self.dirty))
        self._forget(set(events))
        for event_id in events:
            if event_id not in self._ready:
                await self._group(self._stream(event_id))
                self._ready.add(event_id)

        # Per event, in stream order: our own pending entries (a failed write is retried), the
        # entries claimed from dead consumers, then new ones. Each kind in one pipelined round trip.
        batches: dict[int, list[list]] = {e: [] for e in events}
        seen: dict[int, set] = {e: set() for e in events}
        stale: dict[int, list] = {}
        own = [e for e in events if first or e in self._own]
        own_full: set[int] = set()
        replies = await self._pipelined([("xreadgroup", (LEDGER_GROUP, self.consumer, {self._stream(e): "0"}),
                                          {"count": self.batch}) for e in own])
        for event_id, reply in zip(own, replies):
            entries = self._entries(event_id, reply)
            if len(entries) >= self.batch:
                own_full.add(event_id)
            stale[event_id] = [e[0] for e in entries if not e[1]]  # pending, but trimmed from the stream
            self._add(batches, seen, event_id, [e for e in entries if e[1]])
        claim = [e for e in events if housekeep or e in self._claim_now]
        replies = await self._pipelined([("xautoclaim", (self._stream(e), LEDGER_GROUP, self.consumer,
                                                         self.claim_idle_ms),
                                          {"start_id": self._cursor.get(e, "0-0"), "count": self.batch})
                                         for e in claim])
        for event_id, reply in zip(claim, replies):
            if isinstance(reply, Exception):
                self._entries(event_id, reply)  # NOGROUP: the group is created again next tick; else raises
                continue
            cursor, entries = reply[0], [e for e in reply[1] if e[1]]
            self._cursor[event_id] = cursor
            if entries and cursor not in (b"0-0", "0-0"):
                self._claim_now.add(event_id)
            else:
                self._claim_now.discard(event_id)
            if entries:
                log.info("claimed pending ledger entries", extra={"event_id": event_id, "count": len(entries)})
            self._add(batches, seen, event_id, entries)
        replies = await self._pipelined([("xreadgroup", (LEDGER_GROUP, self.consumer, {self._stream(e): ">"}),
                                          {"count": self.batch}) for e in events])
        for event_id, reply in zip(events, replies):
            self._add(batches, seen, event_id, [e for e in self._entries(event_id, reply) if e[1]])

        written = 0
        self._own.update(e for e in events if batches[e])  # until acknowledged
        for event_id in events:
            stream = self._stream(event_id)
            if stale.get(event_id):
                await self.redis.xack(stream, LEDGER_GROUP, *stale[event_id])
            for entries in batches[event_id]:
                written += await self.process(pool, event_id, stream, entries)
            if event_id not in own_full:
                self._own.discard(event_id)
        if housekeep:
            idle = [e for e in events if not batches[e] and e not in on_sale and e not in self._own
                    and e not in self._claim_now]
            await self.prune(idle)
            await self.scrub(set(events))
            await self.settle()
        self.written += written
        return written

    def _entries(self, event_id: int, reply: Any) -> list:
        if isinstance(reply, Exception):  # NOGROUP (stream or group deleted): create it again next tick
            if "NOGROUP" not in str(reply):
                raise reply
            self._ready.discard(event_id)
            return []
        return list(reply[0][1]) if reply else []

    @staticmethod
    def _add(batches: dict[int, list[list]], seen: dict[int, set], event_id: int, entries: list) -> None:
        fresh = [e for e in entries if e[0] not in seen[event_id]]
        seen[event_id].update(e[0] for e in fresh)
        if fresh:
            batches[event_id].append(fresh)

    def _forget(self, polled: set[int]) -> None:
        """Local state of events that left the polled set."""
        self._ready &= polled
        self._own &= polled
        self._claim_now &= polled
        for event_id in [e for e in self._cursor if e not in polled]:
            del self._cursor[event_id]

    async def drained(self, event_ids: list[int]) -> list[bool]:
        """Per event: no pending and no undelivered entry in its ledger stream (one round trip, two
        when Redis cannot tell the group's lag)."""
        replies = await self._pipelined([("xinfo_groups", (self._stream(e),), {}) for e in event_ids])
        out: list[bool] = []
        unknown: list[tuple[int, bytes]] = []
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if "no such key" not in str(reply).lower():
                    raise reply
                out.append(True)  # no stream: nothing to write
                continue
            group = next((g for g in reply if g.get("name") in (LEDGER_GROUP, LEDGER_GROUP.encode())), None)
            if group is None or group.get("pending"):
                out.append(False)  # no group yet (the worker creates it and reads from 0), or pending
            elif group.get("lag") is None:  # lag unknown (deleted entries): compare the ids
                out.append(False)
                unknown.append((i, group.get("last-delivered-id") or b"0-0"))
            else:
                out.append(group["lag"] == 0)
        if unknown:
            infos = await self._pipelined([("xinfo_stream", (self._stream(event_ids[i]),), {}) for i, _ in unknown])
            for (i, delivered), info in zip(unknown, infos):
                last = b"0-0" if isinstance(info, Exception) else info.get("last-generated-id") or b"0-0"
                out[i] = _sid(last) <= _sid(delivered)
        return out

    async def prune(self, candidates: list[int]) -> None:
        """Drop drained events from the polled set: SREM, check again, SADD back what got an entry."""
        if not candidates:
            return
        gone = [e for e, ok in zip(candidates, await self.drained(candidates)) if ok]
        if not gone:
            return
        await self.redis.srem(self.dirty, *gone)
        back = [e for e, ok in zip(gone, await self.drained(gone)) if not ok]
        if back:
            await self.redis.sadd(self.dirty, *back)
        log.debug("ledger events drained", extra={"events": len(gone) - len(back)})

    async def recover(self) -> None:
        """Start pass: mark every event of the registry that has pending or undelivered entries."""
        ids: set[int] = set()
        cursor = 0
        while True:
            cursor, page = await self.redis.sscan(ledger_set(self.prefix), cursor, count=1000)
            ids.update(int(x) for x in page)
            if not cursor:
                break
        marked = 0
        ordered = sorted(ids)
        for i in range(0, len(ordered), RECOVER_CHUNK):
            chunk = ordered[i:i + RECOVER_CHUNK]
            busy = [e for e, ok in zip(chunk, await self.drained(chunk)) if not ok]
            if busy:
                await self.redis.sadd(self.dirty, *busy)
                marked += len(busy)
        log.info("ledger worker started", extra={"events": len(ids), "marked": marked})

    async def scrub(self, polled: set[int]) -> None:
        """A few registry events per round (round-robin): the safety net for a producer that died
        between its XADD and its SADD. At most one SSCAN and `ledger_scrub_batch` checks."""
        if not self._scrub_queue:
            self._scrub_cursor, page = await self.redis.sscan(ledger_set(self.prefix), self._scrub_cursor,
                                                              count=self.scrub_batch)
            self._scrub_queue = [int(x) for x in page]
        take: list[int] = []
        while self._scrub_queue and len(take) < self.scrub_batch:
            event_id = self._scrub_queue.pop()
            if event_id not in polled:
                take.append(event_id)
        if not take:
            return
        busy = [e for e, ok in zip(take, await self.drained(take)) if not ok]
        if busy:
            log.warning("ledger entries found by the scrub (a producer did not mark its event)",
                        extra={"events": busy})
            await self.redis.sadd(self.dirty, *busy)

    async def process(self, pool: asyncpg.Pool, event_id: int, stream: str,
                      entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Write and acknowledge a batch. An entry Postgres can never take (malformed) is moved to
        the event's `ledger:dead` stream, so it cannot block the ones after it; an unreachable
        Postgres raises, and everything stays pending for the next try."""
        try:
            refused = await write_batch(pool, event_id, entries)
        except TRANSIENT:
            raise
        except Exception:
            for entry in entries:
                try:
                    await write_batch(pool, event_id, [entry])
                except TRANSIENT:
                    raise
                except Exception as exc:
                    log.error("ledger entry refused by Postgres; moved to the dead-letter stream",
                              extra={"event_id": event_id, "entry": entry[0], "error": repr(exc)})
                    await self.redis.xadd(event_key(self.prefix, event_id, "ledger:dead"),
                                          {**entry[1], b"entry_id": entry[0], b"error": repr(exc)[:500]})
                await self.redis.xack(stream, LEDGER_GROUP, entry[0])
            return len(entries)
        await self.redis.xack(stream, LEDGER_GROUP, *[e[0] for e in entries])
        if refused:
            await self.settle()
        return len(entries)

    async def settle(self) -> None:
        """Refund the sales Postgres refused (gateway/orders/conflicts.py), for about a second at
        most; a failure here never stops the ledger: the next round tries again."""
        try:
            if self.provider is None:
                from gateway.providers.payments import build_payment_provider

                self.provider = build_payment_provider(self.runtime)
            await conflicts.settle(self.runtime, self.provider)
        except Exception as exc:
            log.warning("refunds of refused sales not settled; tried again next round", extra={"error": repr(exc)})


# Postgres (or the network) is away: retry later, never dead-letter for these.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
             asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
             asyncpg.CrashShutdownError)


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    """Several consumers in one process (`ledger_consumers`, default 2): while one waits for
    Postgres to commit a batch, the next batch is already being written. The first one does the
    housekeeping (start pass, claims, pruning, scrub)."""
    from gateway.providers.payments import build_payment_provider

    n = max(1, runtime.settings.ledger_consumers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    provider = build_payment_provider(runtime)
    try:
        await asyncio.gather(*(_consume(LedgerWorker(runtime, consumer=f"{base}-{i}", housekeeping=i == 0,
                                                     provider=provider), stop) for i in range(n)))
    finally:
        await provider.aclose()


async def _consume(worker: LedgerWorker, stop: asyncio.Event) -> None:
    backoff = 0.1
    idle = POLL_S
    failing = False
    while not stop.is_set():
        try:
            n = await worker.step()
            backoff = 0.1
            if failing:
                log.info("ledger writes resumed")
            failing = False
            if n:
                idle = POLL_S
                continue
            delay = idle
            idle = min(idle * 2, worker.idle_poll_s)  # idle: poll less often, up to idle_poll_s
        except Exception as exc:  # Postgres or Redis away: entries stay pending; try again
            if not failing:
                log.warning("ledger write failed; entries stay pending", extra={"error": repr(exc)})
            failing = True
            delay = backoff
            backoff = min(backoff * 2, 2.0)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass


def _sid(stream_id: bytes | str) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
