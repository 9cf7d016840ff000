"""Per-worker availability snapshots (hotpath), refreshed from Redis.

Each gateway worker keeps, per event it has served, an `AvailabilitySnapshot`
(bitmaps, counts, version) plus GA counts. A refresh loop reads the change
stream every `snapshot_refresh_s` (one pipelined XRANGE for all events: cheap
when nothing changed) and applies the records in order; a gap (trimmed stream,
missed records) triggers a full reload of the bitmaps. A snapshot is a read-only
copy: a "sold" answer may reject fast; a "free" answer never grants anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

import hotpath
from gateway.core.errors import DomainError
from gateway.core.metrics import IN_PROCESS_AVAILABILITY, SNAPSHOT_AGE
from gateway.core.singleflight import SingleFlight
from gateway.sale import inventory
from gateway.sale.layout import EventLayout
from gateway.store.keys import event_key, event_keys, on_sale_set
from gateway.store.scripts import Scripts

log = logging.getLogger("flashgate.snapshots")

# Beyond this many new change records, reloading the bitmaps is cheaper than decoding records.
MAX_RECORDS = 200
WARM_EVERY_S = 1.0


@dataclass
class EventView:
    layout: EventLayout
    snap: Any  # hotpath.AvailabilitySnapshot
    ga: dict[str, dict[str, int]]
    status: str
    last_id: str
    refreshed_at: float
    meta: dict[str, str] = field(default_factory=dict)
    _body: tuple[int, bool, bytes] | None = None

    @property
    def event_id(self) -> int:
        return self.layout.event_id

    def age(self) -> float:
        return time.monotonic() - self.refreshed_at

    def availability(self, *, with_seats: bool, stale: bool) -> bytes:
        """The availability body for this version (rendered once per version)."""
        version = self.snap.version
        cached = self._body
        if cached is not None and cached[0] == version and cached[1] == with_seats and not stale:
            return cached[2]
        counts = self.snap.section_counts()
        body: dict[str, Any] = {
            "event_id": self.event_id, "version": version, "status": self.status, "stale": stale,
            "sections": [{"name": name, "free": c[0], "held": c[1], "sold": c[2]}
                         for name, c in zip(self.layout.section_names, counts)],
            "ga": [{"type": code, "name": t.name, "capacity": t.capacity,
                    "available": max(0, t.capacity - self.ga.get(code, {}).get("held", 0)
                                     - self.ga.get(code, {}).get("sold", 0)),
                    "held": self.ga.get(code, {}).get("held", 0), "sold": self.ga.get(code, {}).get("sold", 0)}
                   for code, t in self.layout.ga.items()],
        }
        if with_seats:
            body["seat_states"] = "0 free, 1 held, 2 sold; one character per seat in seat_index order"
            body["seats"] = self.snap.render_state().decode()
        raw = orjson.dumps(body)
        if not stale:
            self._body = (version, with_seats, raw)
        return raw


class SnapshotManager:
    def __init__(self, *, redis: Redis, scripts: Scripts, prefix: str, refresh_s: float = 0.1,
                 stale_after_s: float = 10.0) -> None:
        self.redis = redis
        self.scripts = scripts
        self.prefix = prefix
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self.views: dict[int, EventView] = {}
        self._load_once: SingleFlight[int, EventView] = SingleFlight(self._load)
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.redis_ok = True
        # Run after every refresh that reached Redis (the holds' give-back of answers lost to an outage).
        self.after_refresh: Callable[[], Awaitable[None]] | None = None

    # -- access ---------------------------------------------------------------
    def peek(self, event_id: int) -> EventView | None:
        return self.views.get(event_id)

    async def get(self, event_id: int) -> EventView:
        view = self.views.get(event_id)
        if view is not None:
            return view
        return await self._load_once(event_id)

    async def availability(self, event_id: int, *, with_seats: bool = True, since: int | None = None) -> bytes:
        """The availability body (JSON) of an event from this worker's snapshot: marked stale when
        Redis has not refreshed it for a while, refused (503) past `stale_after_s`; with `since`
        equal to the current version, only "unchanged"."""
        view = self.views.get(event_id)
        if view is None:
            view = await self._load_once(event_id)
        else:
            IN_PROCESS_AVAILABILITY.inc()  # answered from this worker's snapshot, no Redis call
        age = view.age()
        if age > self.stale_after_s:
            raise DomainError("unavailable", "Availability is temporarily unavailable; try again in a moment.",
                              headers={"Retry-After": "2"})
        stale = age > max(1.0, 5 * self.refresh_s)
        if since is not None and since == view.snap.version and not stale:
            return b'{"event_id":%d,"version":%d,"unchanged":true}' % (event_id, since)
        return view.availability(with_seats=with_seats, stale=stale)

    def max_age(self) -> float | None:
        return max((v.age() for v in self.views.values()), default=None)

    # -- loading ----------------------------------------------------------------
    async def _load(self, event_id: int) -> EventView:
        raw = await self.redis.get(event_key(self.prefix, event_id, "layout"))
        if raw is None:
            raise DomainError("event_not_found", "No such event on sale.", details={"event_id": event_id})
        layout = EventLayout.from_json(raw)
        view = EventView(layout=layout, snap=hotpath.AvailabilitySnapshot(layout.snapshot_rows()), ga={},
                         status="", last_id="0-0", refreshed_at=time.monotonic())
        await self._full(view)
        self.views[event_id] = view
        return view

    async def _full(self, view: EventView) -> None:
        data = await inventory.read_snapshot(scripts=self.scripts, prefix=self.prefix, event_id=view.event_id)
        view.snap.load(data["sold"], data["held"], data["version"])
        view.ga = data["ga"]
        view.status = data["status"]
        view.last_id = data["last_id"]
        view.refreshed_at = time.monotonic()

    async def refresh_event(self, event_id: int) -> None:
        view = self.views.get(event_id)
        if view is not None:
            await self._full(view)

    # -- refresh loop -------------------------------------------------------------
    async def refresh_all(self) -> None:
        """One pipelined read of every event's version and status; then, per changed event, either
        the few change records since our version, or — when many changed — the whole bitmaps
        (one reply of a few kB, cheaper than decoding hundreds of records)."""
        views = list(self.views.values())
        if not views:
            return
        pipe = self.redis.pipeline(transaction=False)
        for view in views:
            pipe.hmget(event_key(self.prefix, view.event_id, "meta"), "version", "status")
        heads = await pipe.execute()
        now = time.monotonic()
        follow, reload = [], []
        for view, (version, status) in zip(views, heads):
            view.status = status.decode() if status else "gone"
            behind = int(version or 0) - view.snap.version
            if behind > MAX_RECORDS or behind < 0:
                reload.append(view)
            elif behind > 0:
                follow.append(view)
            view.refreshed_at = now
        if follow:
            pipe = self.redis.pipeline(transaction=False)
            for view in follow:
                pipe.xrange(event_key(self.prefix, view.event_id, "changes"), min=f"({view.last_id}",
                            count=MAX_RECORDS)
            for view, entries in zip(follow, await pipe.execute()):
                if entries and not self.apply(view, entries):
                    reload.append(view)
        for view in reload:
            await self._full(view)

    def apply(self, view: EventView, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> bool:
        records = []
        ga = view.ga
        current = view.snap.version
        for entry_id, fields in entries:
            version = int(fields[b"v"])
            op = int(fields[b"op"])
            seats = fields.get(b"s", b"")
            records.append((version, op, [int(x) for x in seats.split(b",")] if seats else []))
            g = fields.get(b"g", b"")
            if g and version > current:
                for part in g.decode().split(","):
                    code, _, delta = part.rpartition(":")
                    counts = ga.setdefault(code, {"cap": 0, "held": 0, "sold": 0})
                    n = int(delta)
                    if op == hotpath.OP_SELL:
                        counts["held"] -= n
                        counts["sold"] += n
                    elif op == hotpath.OP_VOID:
                        counts["sold"] += n
                    else:
                        counts["held"] += n
        ok = view.snap.apply_changes(records)
        if ok:
            view.last_id = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
        return ok

    async def warm(self) -> None:
        """Load every open event this worker has not seen yet, so the first buyer does not wait for it
        (an organiser's `open` reaches every worker within a second)."""
        for raw in await self.redis.smembers(on_sale_set(self.prefix)):
            event_id = int(raw)
            if event_id not in self.views and not self._load_once.loading(event_id):
                try:
                    await self._load(event_id)  # awaited here: cancelled with this loop, never orphaned
                except DomainError:
                    pass  # listed but not prepared (yet)

    async def run(self) -> None:
        last_warm = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_warm > WARM_EVERY_S:
                    last_warm = time.monotonic()
                    await self.warm()
                await self.refresh_all()
                self.redis_ok = True
                if self.after_refresh is not None:
                    await self.after_refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.redis_ok:
                    log.warning("snapshot refresh failed; serving the last snapshot", extra={"error": repr(exc)})
                self.redis_ok = False
            SNAPSHOT_AGE.set(self.max_age() or 0.0)  # also while Redis is away: the age keeps growing
            try:
                await asyncio.wait_for(self._stopping.wait(), self.refresh_s)
            except asyncio.TimeoutError:
                pass

    def start(self) -> None:
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Let the loop finish its round (cancelling a Redis command half-way can leave the client
        waiting on a dead connection), then cancel it if it does not within a few seconds."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        except Exception:
            pass
        self._task = None


__all__ = ["SnapshotManager", "EventView", "event_keys"]
