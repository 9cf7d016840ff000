"""The waiting room's per-worker cache: each event's queue state, refreshed together.

Polling costs no Redis command: the event's queue state (admitted-up-to place,
pre-queue size and seed, measured rate, the fate of every admitted place) is
cached per worker and refreshed by one background task every `queue_cache_s`,
whatever the number of pollers. Proof of life of waiting places (a place that
stops polling for `queue_stall_s` is skipped) is collected in memory and written
to Redis in one batched command per event every `queue_seen_flush_s`. Whether an
event is in queue mode (holds and checkout then need an admission token) is
cached here too, refreshed in the same loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.singleflight import SingleFlight
from gateway.core.tasks import stop_task
from gateway.store.keys import event_key, qkey
from gateway.waiting_room.shuffle import prequeue_table

log = logging.getLogger("flashgate.waiting_room")

VIEW_IDLE_S = 60.0        # a cached event nobody polled for this long is dropped
MODE_TTL_S = 1.0          # queue-mode cache entries are refreshed this often
ORDER_INLINE_MAX = 20_000  # pre-queues up to this size get their order computed without a thread
SEEN_CHUNK = 512          # places per BITFIELD command when flushing liveness
STOP_GRACE_S = 5.0        # stop() lets the refresher finish its round this long before cancelling it


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def _f(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value not in (None, b"") else default
    except ValueError:
        return default


@dataclass
class QueueView:
    """One event's queue state in this worker (read-only copy, at most `queue_cache_s` old)."""

    event_id: int
    caught_up_at: float = 0.0  # monotonic time of the last catch-up read a poll asked for (room.py)
    mode: bool = False
    status: str = ""
    prequeue: bool = False
    opened: bool = False
    pre: int = 0
    seed: str = ""
    commitment: str = ""
    epoch: int = 0
    seq: int = 0
    upto: int = 0
    sold_out: bool = False
    free: int = 0   # tickets free, and held (in holds or paying), at the leader's last tick
    held: int = 0
    paused: str = ""
    rate: float = 0.0
    mrate: float = 0.0
    frate: float = 0.0
    factor: float = 1.0
    fate: bytearray = field(default_factory=bytearray)  # u32 per place, place 0 unused
    places: array | None = None  # places[n] = the place of pre-queue arrival n, once the sale opened
    order: list[int] = field(default_factory=list)  # the pre-queue's arrivals in place order
    opened_at: int | None = None  # Unix seconds the sale opened (the pre-queue closed)
    upto_history: list[tuple[int, int]] = field(default_factory=list)  # (second, admitted-up-to at its start)
    order_of: tuple[str, int] = ("", 0)  # (seed, size) the table was built for
    used_at: float = 0.0

    def apply(self, state: dict[bytes, bytes], meta: list[Any], fate_from: int, fate_tail: bytes) -> None:
        self.status = _s(meta[0])
        self.mode = _s(meta[1]) == "1"
        self.rate = _f(meta[2])
        get = state.get
        self.prequeue = get(b"prequeue") == b"1"
        self.pre = int(_f(get(b"pre")))
        self.seed = _s(get(b"seed"))
        # Open for buyers once this copy has the pre-queue's order (QueueCache.refresh builds it).
        self.opened = bool(get(b"opened")) and self.order_ready()
        self.opened_at = int(_f(get(b"opened"))) or None
        self.commitment = _s(get(b"commitment"))
        self.epoch = int(_f(get(b"epoch")))
        self.seq = int(_f(get(b"seq")))
        upto = int(_f(get(b"upto")))
        self.sold_out = get(b"sold_out") == b"1"
        self.free, self.held = int(_f(get(b"free"))), int(_f(get(b"held")))
        self.paused = _s(get(b"paused"))
        self.mrate = _f(get(b"mrate"))
        self.frate = _f(get(b"frate"), -1.0)
        self.factor = _f(get(b"factor"), 1.0)
        if not self.fate:
            self.fate = bytearray(4)
        # Fates are final once written: only what this copy lacks is appended. Two refreshes may
        # overlap and finish in any order, so the tail is appended from where this copy ends, and the
        # admitted-up-to place never moves back nor past the fates this copy knows (positions never rise,
        # and a known place is never taken for a stalled one).
        have = len(self.fate)
        if fate_from <= have < fate_from + len(fate_tail):
            self.fate += fate_tail[have - fate_from:]
        self.upto = max(self.upto, min(upto, len(self.fate) // 4 - 1))
        history = _s(get(b"uh"))
        if history:
            pairs = [part.split(":") for part in history.split(",")]
            self.upto_history = [(int(sec), int(value)) for sec, value in pairs]

    def shown_upto(self, now: float) -> int:
        """The admitted-up-to place positions are counted from: its value at the start of the previous
        second (the leader records one per second), which every worker refreshing on time knows. So two
        workers answering at the same moment show the same position, and it never rises between polls,
        whichever worker answers. Without a record that old, the oldest record (never more than any later
        answer shows); without any record (the leader has not run yet), this worker's own copy."""
        history = self.upto_history
        if not history:
            return self.upto
        limit = int(now) - 1
        shown = history[0][1]
        for sec, value in history:
            if sec <= limit:
                shown = value
        return min(shown, self.upto)

    def order_ready(self) -> bool:
        return self.pre == 0 or (self.places is not None and self.order_of == (self.seed, self.pre))

    def place(self, n: int) -> int:
        """The place of arrival `n`: its place in the pre-queue's order, else `n`; 0 before opening."""
        if not self.opened:
            return 0
        if n > self.pre:
            return n
        return self.places[n]  # type: ignore[index]

    def fate_of(self, place: int) -> int:
        o = 4 * place
        raw = self.fate[o:o + 4]
        return int.from_bytes(raw, "big") if len(raw) == 4 else 0

    def eta(self, position: int) -> int | None:
        if self.paused or not self.opened:
            return None
        rate = eta_rate(self.mrate, self.frate, self.rate * self.factor)
        return math.ceil(position / rate) if rate > 0 else None



def eta_rate(measured: float, forecast: float, configured: float) -> float:
    """Places per second a waiting buyer's ETA is counted at: the faster of the measured rate (5 s
    EWMA of places passed while buyers waited; it includes skipped places) and the leader's forecast
    (where admission is heading: the configured rate under backpressure, or checkout's pace while
    admission follows it). The measured rate alone lags a queue that has just opened or resumed and
    made ETAs several times too long; the forecast alone misses places skipped for stalled buyers.
    Forecast 0: the tickets left cannot serve a second of it, so only the measured rate counts.
    Forecast unknown (< 0, a leader before this field): the configured rate stands in for it."""
    if forecast < 0:
        return measured if measured > 0.05 else configured
    return max(measured, forecast)


class QueueCache:
    def __init__(self, *, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = settings.redis_prefix
        self.views: dict[int, QueueView] = {}
        self._load_once: SingleFlight[int, QueueView] = SingleFlight(self._load)
        self._catch_up_once: SingleFlight[int, None] = SingleFlight(self._catch_up)
        self.seen: dict[int, dict[int, int]] = {}
        self.modes: dict[int, tuple[bool | None, float]] = {}
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    # -- views ------------------------------------------------------------------------
    async def view(self, event_id: int) -> QueueView:
        view = self.views.get(event_id)
        if view is not None:
            return view
        return await self._load_once(event_id)

    async def _load(self, event_id: int) -> QueueView:
        view = QueueView(event_id=event_id, used_at=time.monotonic())
        await self.refresh([view])
        if not view.mode and not view.prequeue:
            raise DomainError("not_on_sale", "This event has no open waiting room.",
                              details={"event_id": event_id, "status": view.status or "draft"})
        self.views[event_id] = view
        return view

    async def refresh(self, views: list[QueueView]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        offsets = []
        for v in views:
            offsets.append(max(len(v.fate), 4))
            pipe.hgetall(qkey(self.prefix, v.event_id, "state"))
            pipe.hmget(event_key(self.prefix, v.event_id, "meta"), "status", "queue_mode", "admission_rate")
            pipe.getrange(qkey(self.prefix, v.event_id, "fate"), offsets[-1], -1)
        results = await pipe.execute()
        for i, v in enumerate(views):
            v.apply(results[3 * i], results[3 * i + 1], offsets[i], results[3 * i + 2])
            self.modes[v.event_id] = (v.mode, time.monotonic() + MODE_TTL_S)
            state = results[3 * i]
            if state.get(b"opened") and not v.order_ready() and v.seed:
                await self._build_order(v)

    async def _build_order(self, view: QueueView) -> None:
        """The pre-queue's order, computed once per worker when the sale opens (shuffle.py): inline for
        a small pre-queue, in a thread for a large one (about a second per million arrivals)."""
        seed, size = view.seed, view.pre
        if size <= ORDER_INLINE_MAX:
            order, places = prequeue_table(seed, size)
        else:
            order, places = await asyncio.to_thread(prequeue_table, seed, size)
        if (view.seed, view.pre) == (seed, size):
            view.order, view.places, view.order_of, view.opened = order, places, (seed, size), True

    def catching_up(self, event_id: int) -> bool:
        return self._catch_up_once.loading(event_id)

    async def catch_up(self, view: QueueView) -> None:
        """Refresh one view now; every poll asking while that read runs waits for the same read (an
        answer from the copy it is replacing could show a buyer less than another worker did)."""
        await self._catch_up_once(view.event_id)

    async def _catch_up(self, event_id: int) -> None:
        view = self.views.get(event_id)
        if view is not None:
            await self.refresh([view])

    async def refresh_all(self) -> None:
        now = time.monotonic()
        for event_id in [e for e, v in self.views.items() if now - v.used_at > VIEW_IDLE_S]:
            self.views.pop(event_id, None)
        if self.views:
            await self.refresh(list(self.views.values()))

    async def forget_mode(self, event_id: int) -> None:
        """An organiser changed the event: drop its cached mode, refresh its view at once."""
        self.modes.pop(event_id, None)
        if event_id in self.views:
            await self.refresh([self.views[event_id]])

    # -- queue mode (holds and checkout) -------------------------------------------------
    def known_mode(self, event_id: int) -> bool | None:
        """The cached queue mode of an event, or None when this worker must read it first."""
        hit = self.modes.get(event_id)
        if hit is not None and (hit[0] is not None or hit[1] > time.monotonic()):
            return bool(hit[0])
        return None

    async def queue_mode(self, event_id: int) -> bool:
        known = self.known_mode(event_id)
        if known is not None:
            return known
        now = time.monotonic()
        # First sight of this event in this worker: one read, then cached and refreshed in the
        # background. Guessing either way would be wrong: "off" lets buyers past the queue, "on"
        # refuses buyers of events without one.
        raw = await self.redis.hget(event_key(self.prefix, event_id, "meta"), "queue_mode")
        mode = None if raw is None else raw == b"1"
        self.modes[event_id] = (mode, now + MODE_TTL_S)
        return bool(mode)

    async def _refresh_modes(self) -> None:
        ids = list(self.modes)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hget(event_key(self.prefix, event_id, "meta"), "queue_mode")
        until = time.monotonic() + MODE_TTL_S + self.settings.queue_seen_flush_s
        for event_id, raw in zip(ids, await pipe.execute()):
            self.modes[event_id] = (None if raw is None else raw == b"1", until)
        if len(self.modes) > 10_000:
            self.modes.clear()

    # -- liveness -------------------------------------------------------------------------
    def saw(self, event_id: int, place: int, value: int) -> None:
        self.seen.setdefault(event_id, {})[place] = value

    async def flush_seen(self) -> int:
        """Write the places polled since the last flush (one BITFIELD per event per chunk)."""
        batch, self.seen = self.seen, {}
        if not batch:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for event_id, places in batch.items():
            items = list(places.items())
            for i in range(0, len(items), SEEN_CHUNK):
                args: list[Any] = []
                for place, value in items[i:i + SEEN_CHUNK]:
                    args += ["SET", "u32", f"#{place}", value]
                pipe.execute_command("BITFIELD", qkey(self.prefix, event_id, "seen"), *args)
                n += 1
        await pipe.execute()
        return n

    # -- background -----------------------------------------------------------------------
    async def run(self) -> None:
        s = self.settings
        next_flush = time.monotonic() + s.queue_seen_flush_s
        failing = False
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), s.queue_cache_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.refresh_all()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + s.queue_seen_flush_s
                    await self.flush_seen()
                    await self._refresh_modes()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep serving the cached copy
                if not failing:
                    log.warning("waiting room refresh failed; serving the cached state", extra={"error": repr(exc)})
                failing = True

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Let the loop finish its round, then cancel it if it does not within a few seconds. A
        cancellation that lands inside a Redis pipeline can be swallowed by the client, so the cancel
        is repeated, each time with a bounded wait, until the task has ended."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            await stop_task(task, grace_s=STOP_GRACE_S, name="waiting room refresher")
        try:
            await self.flush_seen()
        except Exception:
            pass
