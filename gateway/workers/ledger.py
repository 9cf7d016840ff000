"""Ledger worker: Redis ledger streams -> Postgres, in batches, exactly once in effect.

For every event that ever sold, read the ledger stream with a consumer group
(up to 1,000 entries per read), write the batch in ONE Postgres transaction with
idempotent inserts (ON CONFLICT DO NOTHING on deterministic ids), then XACK.
Entries are acknowledged only after the commit, so a Postgres outage or a
worker crash loses nothing: unacknowledged entries stay pending and are written
on the next try, or claimed (XAUTOCLAIM) by another worker once idle.
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
from gateway.services.orders import ticket_id_hex
from gateway.store.keys import LEDGER_GROUP, event_key, ledger_set

log = logging.getLogger("flashgate.ledger")

BATCH = 1000
IDLE_SLEEP_S = 0.02
CLAIM_IDLE_MS = int(os.environ.get("FLASHGATE_LEDGER_CLAIM_IDLE_MS", "15000"))
CLAIM_EVERY_S = 5.0


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

    async def add(self, stream_id: str, kind: str, data: dict[str, Any], extra: dict[str, Any]) -> None:
        if kind == "order":
            self._order(data, extra)
        elif kind == "void":
            await self.flush()  # a void must follow the sale it undoes
            await self._void(data, extra)
        elif kind == "orphan_refund":
            self._orphan(data)
        elif kind == "scan":
            await self.flush()
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
            self.payments.append((payment_uuid(d["order_id"], kind), None, d["hold_id"], "simulator", ref, kind,
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
                   SELECT $1::uuid, o.id, o.hold_id, 'simulator', $2, 'refund', $3, o.currency, 'succeeded', $4
                   FROM orders o WHERE o.id = $5 ON CONFLICT DO NOTHING""",
                payment_uuid(d["order_id"], "refund"), o["refund_id"], int(o.get("amount_minor") or 0), at, order_id)

    async def _scan(self, d: dict[str, Any]) -> None:
        await self.conn.execute(
            """INSERT INTO scans (id, event_id, ticket_id, device_id, device_scan_id, gate, result, scanned_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
            uuid.UUID(d["scan_id"]), self.event_id, uuid.UUID(d["ticket_id"]) if d.get("ticket_id") else None,
            uuid.UUID(d["device_id"]), d["device_scan_id"], d["gate"], d["result"], _ts(d.get("scanned_at_ms")))

    async def flush(self) -> None:
        if self.orders:
            cols = list(zip(*self.orders))
            await self.conn.execute(
                """INSERT INTO orders (id, event_id, hold_id, buyer, email, status, total_minor, currency,
                                       idempotency_key, paid_at)
                   SELECT i, e, h, b, m, s, t, c, k, to_timestamp(a / 1000.0)
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
        if self.tickets:
            cols = list(zip(*self.tickets))
            await self.conn.execute(
                """INSERT INTO tickets (id, order_id, event_id, serial, seat_index, ticket_type, created_at)
                   SELECT i, o, e, s, x, t, to_timestamp(a / 1000.0)
                   FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::bigint[], $4::int[], $5::int[],
                               $6::text[], $7::float8[]) AS u(i, o, e, s, x, t, a)
                   ON CONFLICT DO NOTHING""", *cols)
        self.orders.clear()
        self.payments.clear()
        self.tickets.clear()


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


async def write_batch(pool: asyncpg.Pool, event_id: int, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
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


class LedgerWorker:
    def __init__(self, runtime: Runtime, consumer: str | None = None) -> None:
        self.runtime = runtime
        self.redis = runtime.redis
        self.prefix = runtime.settings.redis_prefix
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.written = 0
        self._last_claim = 0.0
        self._ready: set[int] = set()

    async def _group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, LEDGER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self) -> int:
        """One pass over every event; returns how many entries were written."""
        pool = await self.runtime.pg()
        claim = time.monotonic() - self._last_claim > CLAIM_EVERY_S
        if claim:
            self._last_claim = time.monotonic()
        written = 0
        for raw in await self.redis.smembers(ledger_set(self.prefix)):
            event_id = int(raw)
            stream = event_key(self.prefix, event_id, "ledger")
            if event_id not in self._ready:
                await self._group(stream)
                self._ready.add(event_id)
            batches = []
            # Our own pending entries first (a failed write is retried), then new ones.
            mine = await self.redis.xreadgroup(LEDGER_GROUP, self.consumer, {stream: "0"}, count=BATCH)
            if mine and mine[0][1]:
                batches.append(mine[0][1])
            else:
                new = await self.redis.xreadgroup(LEDGER_GROUP, self.consumer, {stream: ">"}, count=BATCH)
                if new and new[0][1]:
                    batches.append(new[0][1])
            if claim:
                claimed = await self.redis.xautoclaim(stream, LEDGER_GROUP, self.consumer, CLAIM_IDLE_MS,
                                                      start_id="0-0", count=BATCH)
                if claimed and claimed[1]:
                    batches.append(claimed[1])
                    log.info("claimed pending ledger entries", extra={"event_id": event_id,
                                                                      "count": len(claimed[1])})
            for entries in batches:
                entries = [e for e in entries if e[1]]  # skip ids whose entry was trimmed
                if entries:
                    written += await self.process(pool, event_id, stream, entries)
        self.written += written
        return written


    async def process(self, pool: asyncpg.Pool, event_id: int, stream: str,
                      entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Write and acknowledge a batch. An entry Postgres can never take (malformed) is moved to
        the event's `ledger:dead` stream, so it cannot block the ones after it; an unreachable
        Postgres raises, and everything stays pending for the next try."""
        try:
            await write_batch(pool, event_id, entries)
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
        return len(entries)


# Postgres (or the network) is away: retry later, never dead-letter for these.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
             asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
             asyncpg.CrashShutdownError)


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    """Several consumers in one process (FLASHGATE_LEDGER_CONSUMERS, default 2): while one waits for
    Postgres to commit a batch, the next batch is already being written."""
    n = max(1, int(os.environ.get("FLASHGATE_LEDGER_CONSUMERS", "2")))
    base = f"{socket.gethostname()}-{os.getpid()}"
    await asyncio.gather(*(_consume(LedgerWorker(runtime, consumer=f"{base}-{i}"), stop) for i in range(n)))


async def _consume(worker: LedgerWorker, stop: asyncio.Event) -> None:
    backoff = 0.1
    failing = False
    while not stop.is_set():
        try:
            n = await worker.step()
            backoff = 0.1
            if failing:
                log.info("ledger writes resumed")
            failing = False
            if n:
                continue
            delay = IDLE_SLEEP_S
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
