"""Live figures of one event for its organiser (`GET /v1/events/{id}/stats`, the `/live` stream).

Every figure comes from Redis, so any gateway worker answers the same, and none touches Postgres
(only the first look at a draft event that was never opened reads its owner and seat map there):

- sold / held / available per section: BITCOUNT over each section's seat range of the `sold` and
  `held` bitmaps; per GA type: the `ga` hash;
- holds, releases, expiries, sales, refunds, revenue and the per-minute buckets: running totals
  folded from the `changes` and `ledger` streams by `lua/live_fold.lua` (one call moves the cursors
  and the totals together, so a record is counted once however many workers fold at the same time);
- queue, admission rate and ETA: the waiting room's own figures (`waiting_room.admin.queue_stats`);
- providers: the shared circuit-breaker hashes, and the adaptive-limit figures each gateway worker
  publishes every second (`pacing_key`);
- dead letters: the event's ledger dead stream and the organisation's notification dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.exceptions import RedisError

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.core.tasks import stop_task
from gateway.organisers import events
from gateway.orders import notify
from gateway.providers.breaker import STATE_CLOSED
from gateway.sale.layout import EventLayout
from gateway.scanning.stats import scan_stats
from gateway.store.keys import breaker_key, event_key, live_keys, on_sale_set, pacing_key
from gateway.waiting_room.admin import queue_stats
from gateway.store.cluster import ready_for_transaction

log = logging.getLogger("flashgate.live")

MAX_SEAT_VIEW = 10_000  # seats drawn one by one on the dashboard; above it, sections only
MINUTES_SHOWN = 60      # sales-per-minute buckets in the figures
MINUTES_KEPT = 180      # buckets kept in Redis
FOLD_MAX = 5000         # stream records folded per script call (bounds the script's run time)
PACING_EVERY_S = 1.0    # how often a worker publishes its limiter figures
PACING_FRESH_S = 5.0    # a worker's figures older than this are left out (worker gone)
FOLD_EVERY_S = 5        # how often each worker folds the streams of every event on sale (watched or not)
OPS = {1: "hold", 2: "release", 3: "sell", 4: "void", 5: "expire"}


def _int(raw: Any) -> int:
    try:
        return int(raw) if raw not in (None, b"") else 0
    except ValueError:
        return int(float(raw))


def _hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def section_ranges(layout: EventLayout) -> list[list[tuple[int, int]]]:
    """Each section's seats as inclusive index ranges (one range when its rows are consecutive)."""
    ranges: list[list[tuple[int, int]]] = [[] for _ in layout.section_names]
    for section, _, start, labels in layout.rows:
        if not labels:
            continue
        end = start + len(labels) - 1
        runs = ranges[section]
        if runs and runs[-1][1] + 1 == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return ranges


def seat_states(sold: bytes | None, held: bytes | None, n_seats: int) -> str:
    """One character per seat: 0 free, 1 held, 2 sold (the availability endpoint's encoding)."""
    width = (n_seats + 7) // 8 * 8
    s = format(int.from_bytes((sold or b"")[: width // 8].ljust(width // 8, b"\0"), "big"), f"0{width}b")
    h = format(int.from_bytes((held or b"")[: width // 8].ljust(width // 8, b"\0"), "big"), f"0{width}b")
    return "".join("2" if a == "1" else "1" if b == "1" else "0" for a, b in zip(s[:n_seats], h[:n_seats]))


def layout_view(layout: EventLayout, name: str = "") -> dict[str, Any]:
    """What the dashboard draws the seat map from: sections, their rows (first seat index, size), GA types."""
    sections: list[dict[str, Any]] = [{"name": name, "rows": []} for name in layout.section_names]
    for section, label, start, labels in layout.rows:
        sections[section]["rows"].append({"label": label, "first": start, "seats": len(labels)})
    return {"event_id": layout.event_id, "name": name, "currency": layout.currency, "n_seats": layout.n_seats,
            "seat_view": 0 < layout.n_seats <= MAX_SEAT_VIEW, "max_seat_view": MAX_SEAT_VIEW,
            "sections": sections, "ga": [{"type": c, "name": t.name, "capacity": t.capacity}
                                         for c, t in layout.ga.items()]}


def stream_id(raw: str | bytes) -> tuple[int, int]:
    """A Redis stream id as a comparable pair; ValueError when it is not one."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, sep, seq = text.strip().partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()) or len(text) > 40:
        raise ValueError(text)
    return int(ms), int(seq or 0)


class LiveFigures:
    """The organiser's figures of an event, computed from Redis (per process: caches of what never
    changes — owner, seat map — and of the organisation's dead-letter count)."""

    def __init__(self, runtime: Runtime, *, pacing: Any = None, worker_id: str | None = None) -> None:
        self.runtime = runtime
        self.redis = runtime.redis
        self.prefix = runtime.prefix
        self.pacing = pacing  # this worker's payment provider (its limiter figures are published)
        self.worker_id = worker_id or f"{os.getpid()}-{os.urandom(3).hex()}"
        self.owners: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.layouts: dict[int, EventLayout] = {}
        self.ranges: dict[int, list[list[tuple[int, int]]]] = {}
        self._dead: dict[int, tuple[tuple[int, bytes], int]] = {}
        self._others: dict[int, tuple[float, dict[str, Any], dict[str, Any]]] = {}
        self._task: asyncio.Task | None = None

    # -- access ----------------------------------------------------------------------------------------
    async def owned(self, organisation_id: int, event_id: int) -> EventLayout:
        """The event's seat map, if the organisation owns the event; 404 otherwise (also for another
        organisation's event: its existence is not revealed)."""
        owner = self.owners.get(event_id)
        if owner is None:
            raw, name = await self.redis.hmget(event_key(self.prefix, event_id, "info"), "organisation_id", "name")
            if raw is not None:
                owner = int(raw)
                self.names[event_id] = (name or b"").decode()
            else:  # never opened: only Postgres knows it (once per worker)
                try:
                    view = await events.get_event(await self.runtime.pg(), organisation_id=organisation_id,
                                                  event_id=event_id)
                except DomainError:
                    raise events.not_found(event_id) from None
                owner = organisation_id
                self.names[event_id] = view["name"]
            self.owners[event_id] = owner
        if owner != organisation_id:
            raise events.not_found(event_id)
        return await self.layout(event_id)

    async def layout(self, event_id: int) -> EventLayout:
        """The seat map: from Redis once the event opened (then it never changes, so it is kept); a draft's
        from Postgres each time (its seat map may still be replaced)."""
        layout = self.layouts.get(event_id)
        if layout is None:
            raw = await self.redis.get(event_key(self.prefix, event_id, "layout"))
            if raw is not None:
                layout = self.layouts[event_id] = EventLayout.from_json(raw)
            else:
                layout = await events.load_layout(await self.runtime.pg(), event_id)
            self.ranges[event_id] = section_ranges(layout)
        return layout

    async def stats(self, organisation_id: int, event_id: int) -> dict[str, Any]:
        """`GET /v1/events/{id}/stats`: the event's figures now."""
        layout = await self.owned(organisation_id, event_id)
        figures, _ = await self.figures(layout)
        return figures

    # -- figures ------------------------------------------------------------------------------------------
    async def fold(self, event_id: int) -> None:
        for _ in range(20):  # at most 100,000 records per stream per read: bounded, and caught up next time
            cur = await self.runtime.scripts.raw("live_fold", live_keys(self.prefix, event_id),
                                                 [FOLD_MAX, MINUTES_KEPT])
            if not int(cur[2]):
                return

    async def figures(self, layout: EventLayout, *, seats: bool = False,
                      others_max_age_s: float = 0.0) -> tuple[dict[str, Any], str | None]:
        """The figures, and — with `seats` — the per-seat states read in the same transaction as the last
        change id (so the dashboard can apply the changes that follow without a gap). The figures a sale
        does not move (queue, providers, dead letters) may be reused up to `others_max_age_s` old."""
        event_id = layout.event_id
        cached = self._others.get(event_id)
        scans = scan_stats(self.redis, self.prefix, event_id)  # the door, per gate (docs/scanning.md)
        if cached is not None and time.monotonic() - cached[0] <= others_max_age_s:
            ((inv, last_id, states), scans), (_, queue, glob) = \
                await asyncio.gather(self._inventory(layout, seats), scans), cached
        else:
            queue, (inv, last_id, states), glob, scans = await asyncio.gather(
                queue_stats(self.runtime, event_id), self._inventory(layout, seats), self._global(event_id), scans)
            self._others[event_id] = (time.monotonic(), queue, glob)
        figures = self._shape(layout, inv, queue, glob)
        figures["scans"] = scans
        figures["last_change_id"] = last_id
        return figures, states

    async def _inventory(self, layout: EventLayout, seats: bool) -> tuple[dict[str, Any], str, str | None]:
        """One MULTI on the event's keys (one slot): bitmaps counted per section, GA counts, totals."""
        event_id, key = layout.event_id, (lambda name: event_key(self.prefix, event_id, name))
        ranges = self.ranges[event_id]
        await ready_for_transaction(self.redis)
        pipe = self.redis.pipeline(transaction=True)
        # the fold first, in the same round trip: the totals below include every record up to now
        # (execute_command: redis-py's cluster pipeline refuses its evalsha method, not the command)
        pipe.execute_command("EVALSHA", self.runtime.scripts["live_fold"].sha, 4, *live_keys(self.prefix, event_id),
                             FOLD_MAX, MINUTES_KEPT)
        for runs in ranges:
            for start, end in runs:
                pipe.bitcount(key("sold"), start, end, "BIT")
                pipe.bitcount(key("held"), start, end, "BIT")
        pipe.hgetall(key("ga"))
        pipe.hgetall(key("live"))
        pipe.hgetall(key("live:min"))
        pipe.hmget(key("meta"), "status", "version")
        pipe.zcard(key("holds"))
        pipe.xrevrange(key("changes"), count=1)
        pipe.xlen(key("ledger:dead"))
        with_seats = seats and 0 < layout.n_seats <= MAX_SEAT_VIEW
        if with_seats:
            pipe.get(key("sold"))
            pipe.get(key("held"))
        out = await pipe.execute(raise_on_error=False)
        if isinstance(out[0], Exception) or int(out[0][2]):  # script not loaded (Redis restarted), or far behind
            await self.fold(event_id)
            return await self._inventory(layout, seats)
        for reply in out:
            if isinstance(reply, Exception):
                raise reply
        out = out[1:]
        counts, pos = [], 0
        for runs in ranges:
            sold = held = 0
            for _ in runs:
                sold += out[pos]
                held += out[pos + 1]
                pos += 2
            counts.append((sold, held))
        ga, live, minutes, meta, active, last, ledger_dead = out[pos:pos + 7]
        states = seat_states(out[pos + 7], out[pos + 8], layout.n_seats) if with_seats else None
        last_id = last[0][0].decode() if last else "0-0"
        return ({"counts": counts, "ga": _hash(ga), "live": _hash(live), "minutes": _hash(minutes),
                 "status": (meta[0] or b"draft").decode(), "version": _int(meta[1]), "active": active,
                 "ledger_dead": ledger_dead}, last_id, states)

    async def _global(self, event_id: int) -> dict[str, Any]:
        """Keys outside the event's slot: breakers, pacing, the notification dead letters."""
        webhook = await self.redis.hget(event_key(self.prefix, event_id, "info"), "webhook_url")
        host = urlsplit(webhook.decode()).hostname if webhook else None
        names = ["payments", "smtp"] + ([f"webhook:{host}"] if host else [])
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(breaker_key(self.prefix, name))
        pipe.hgetall(pacing_key(self.prefix, "payments"))
        pipe.xlen(notify.dead_key(self.runtime))
        pipe.xrevrange(notify.dead_key(self.runtime), count=1)
        out = await pipe.execute()
        breakers = {name.split(":", 1)[0]: _breaker(_hash(raw)) for name, raw in zip(names, out)}
        pacing, dead_len, dead_last = out[len(names):]
        owner = self.owners.get(event_id)
        dead = 0
        if owner is not None and dead_len:
            mark = (dead_len, dead_last[0][0] if dead_last else b"")
            cached = self._dead.get(owner)
            if cached is not None and cached[0] == mark:
                dead = cached[1]
            else:  # the dead-letter stream changed: count this organisation's letters again
                dead = len(await notify.list_dead(self.runtime, limit=100_000, org_id=owner))
                self._dead[owner] = (mark, dead)
        return {"breakers": breakers, "pacing": _pacing(pacing), "notify_dead": dead}

    def _shape(self, layout: EventLayout, inv: dict[str, Any], queue: dict[str, Any],
               glob: dict[str, Any]) -> dict[str, Any]:
        sections = []
        for name, runs, (sold, held) in zip(layout.section_names, self.ranges[layout.event_id], inv["counts"]):
            capacity = sum(end - start + 1 for start, end in runs)
            sections.append({"name": name, "capacity": capacity, "sold": sold, "held": held,
                             "available": max(0, capacity - sold - held)})
        ga_counts, ga = inv["ga"], []
        for code, t in layout.ga.items():
            sold, held = _int(ga_counts.get(f"sold:{code}")), _int(ga_counts.get(f"held:{code}"))
            ga.append({"type": code, "name": t.name, "capacity": t.capacity, "sold": sold, "held": held,
                       "available": max(0, t.capacity - sold - held)})
        parts = sections + ga
        total = {k: sum(p[k] for p in parts) for k in ("capacity", "sold", "held", "available")}
        live = {k: _int(v) for k, v in inv["live"].items() if not k.startswith(("cur:", "min:"))}
        per_minute = _minutes(inv["minutes"])
        now_min = int(time.time() // 60)
        last_min = per_minute[-1] if per_minute and per_minute[-1]["minute"] == now_min * 60_000 else None
        prev_min = next((m for m in per_minute if m["minute"] == (now_min - 1) * 60_000), None)
        frac = (time.time() % 60) / 60
        tickets_per_min = round((last_min["tickets"] if last_min else 0)
                                + (prev_min["tickets"] if prev_min else 0) * (1 - frac), 1)
        gross, refunded = live.get("revenue", 0), live.get("refunded", 0)
        admitted = queue["admitted"] if queue["enabled"] else None
        return {
            "event_id": layout.event_id, "status": inv["status"], "version": inv["version"],
            "currency": layout.currency, "now_ms": int(time.time() * 1000),
            "totals": total, "sections": sections, "ga": ga,
            "revenue": {"currency": layout.currency, "gross_minor": gross, "refunded_minor": refunded,
                        "net_minor": gross - refunded, "orders": live.get("orders", 0),
                        "refunds": live.get("refunds", 0)},
            "sales": {"tickets_per_minute": tickets_per_min, "per_minute": per_minute,
                      "tickets_sold_total": live.get("sold:tickets", 0)},
            "admission": {"queue_enabled": queue["enabled"], "phase": queue["phase"], "length": queue["length"],
                          "admitted": queue["admitted"], "rate_per_s": queue["rate"]["effective_per_s"],
                          "measured_per_s": queue["rate"]["measured_per_s"], "eta_s": queue["eta_last_s"],
                          "paused": queue["paused"], "sold_out": queue["sold_out"]},
            "funnel": {"admitted": admitted, "holds": live.get("holds", 0), "paid": live.get("sold", 0),
                       "in_progress": inv["active"],
                       "dropped": {"expired": live.get("expired", 0), "released": live.get("released", 0),
                                   "admitted_without_hold": max(0, admitted - live.get("holds", 0))
                                   if admitted is not None else None},
                       "refunded": live.get("voided", 0),
                       "tickets": {"held": live.get("holds:tickets", 0), "paid": live.get("sold:tickets", 0),
                                   "expired": live.get("expired:tickets", 0),
                                   "released": live.get("released:tickets", 0),
                                   "refunded": live.get("voided:tickets", 0)}},
            "providers": {"payments": {"name": "payments", "breaker": glob["breakers"].get("payments"),
                                       "pacing": glob["pacing"]},
                          "notifications": {k: v for k, v in glob["breakers"].items() if k != "payments"}},
            "dead_letters": {"notifications": glob["notify_dead"], "ledger": inv["ledger_dead"]},
            "queue": queue,
        }

    # -- pacing publisher -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self.pacing is not None:
            self._task = asyncio.get_running_loop().create_task(self._publish())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task, name="live figures publisher")  # a cancel inside redis-py may be swallowed
            try:
                await self.redis.hdel(pacing_key(self.prefix, "payments"), self.worker_id)
            except (RedisError, OSError):
                pass

    async def _publish(self) -> None:
        """Every second, this worker's adaptive-limit figures (pacing is per process) go to Redis, so any
        worker can show all of them; every `FOLD_EVERY_S`, the streams of the events on sale are folded
        into the running totals even when nobody watches (before the `changes` stream trims records)."""
        key = pacing_key(self.prefix, "payments")
        rounds = 0
        while True:
            try:
                snap = dict(self.pacing.limiter.snapshot(), at=time.time())
                await self.redis.hset(key, self.worker_id, orjson.dumps(snap))
                rounds += 1
                if rounds % FOLD_EVERY_S == 0:
                    for raw in await self.redis.smembers(on_sale_set(self.prefix)):
                        await self.fold(int(raw))
                if rounds % 60 == 0:  # forget workers that stopped without saying so
                    old = [f for f, v in (await self.redis.hgetall(key)).items()
                           if time.time() - orjson.loads(v).get("at", 0) > 60]
                    if old:
                        await self.redis.hdel(key, *old)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: figures are best effort
                log.debug("pacing figures not published", extra={"error": repr(exc)})
            await asyncio.sleep(PACING_EVERY_S)


def _breaker(data: dict[str, str]) -> dict[str, Any]:
    state = data.get("state", STATE_CLOSED)
    out: dict[str, Any] = {"state": state, "failures": _int(data.get("fail"))}
    if data.get("opened_at"):
        out["opened_at"] = float(data["opened_at"])
    if data.get("changed_at"):
        out["changed_at"] = float(data["changed_at"])
    return out


def _pacing(raw: dict[bytes, bytes]) -> dict[str, Any]:
    now = time.time()
    workers = [w for w in (orjson.loads(v) for v in raw.values()) if now - w.get("at", 0) <= PACING_FRESH_S]
    total = {k: sum(int(w.get(k) or 0) for w in workers)
             for k in ("limit", "in_flight", "queued", "passed", "shed", "throttled", "timeouts")}
    rtts = [w["rtt_short_ms"] for w in workers if w.get("rtt_short_ms") is not None]
    return {"workers": len(workers), **total, "rtt_ms": round(max(rtts), 1) if rtts else None}


def _minutes(raw: dict[str, str]) -> list[dict[str, Any]]:
    now_min = int(time.time() // 60)
    rows: dict[int, dict[str, Any]] = {}
    for field, value in raw.items():
        kind, _, minute = field.partition(":")
        m = _int(minute)
        if now_min - MINUTES_SHOWN < m <= now_min:
            row = rows.setdefault(m, {"minute": m * 60_000, "tickets": 0, "orders": 0, "revenue_minor": 0})
            row[{"t": "tickets", "o": "orders", "r": "revenue_minor"}.get(kind, "tickets")] = _int(value)
    return [rows[m] for m in sorted(rows)]
