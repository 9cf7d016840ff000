"""`GET /v1/events/{id}/live`: the event's figures as Server-Sent Events, resumable with Last-Event-ID.

Per gateway worker and watched event, one `Feed` task tails the event's `changes` stream (XREAD
BLOCK: it wakes the moment a script appends a record), re-reads the inventory figures from Redis (one
MULTI that also folds the streams) and hands the same pre-encoded message — the seat changes, then the
figures that include them — to every stream this worker serves for the event. Broadcasts are at least
`gap()` apart (25 ms, plus 0.1 ms per open stream: the sales of that window share one message) and
at most `tick_s` apart (queue, providers and the per-minute rate move without inventory changes; they
are re-read on the tick). A client that falls behind gets everything waiting in one write; one too
far behind gets the whole state again. Nothing per-worker goes into the figures: a browser gets the same numbers from any worker.

Event ids are ids of the `changes` stream: `seats` events carry the seat changes after the previous
id, so a client that reconnects with `Last-Event-ID` gets exactly the changes it missed (from any
worker, while the stream still holds them; otherwise the whole seat map again). The stream:

    event: layout   the seat map's shape (sections, rows, GA types), once per connection
    event: seatmap  {"seats": "0120..."}: one character per seat (0 free, 1 held, 2 sold)
    event: seats    {"changes": [[op, [seat, ...]], ...]}: op 1 hold, 2 release, 3 sell, 4 void, 5 expire
    event: figures  the same body as GET /v1/events/{id}/stats
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.core.errors import DomainError
from gateway.organisers.live import LiveFigures, layout_view, stream_id
from gateway.sale.layout import EventLayout
from gateway.store.keys import event_key

log = logging.getLogger("flashgate.live")

RESUME_MAX = 5000       # change records replayed to a resuming client; beyond, the whole seat map again
READ_MAX = 1000         # change records per XREAD
BLOCK_MS = 500          # below the Redis client's socket timeout
QUEUE_MAX = 64          # messages waiting for a slow client; beyond, it is re-synchronised instead
RETRY_MS = 2000         # the reconnection delay an EventSource client is told
Id = tuple[int, int]


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = b"id: %s\n" % event_id.encode() if event_id else b""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"%sevent: %s\ndata: %s\n\n" % (head, event.encode(), body)


def seat_changes(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[list[Any]]:
    out = []
    for _, fields in entries:
        seats = fields.get(b"s", b"")
        if seats:
            out.append([int(fields[b"op"]), [int(x) for x in seats.split(b",")]])
    return out


@dataclass
class Message:
    """One broadcast: the seat changes since the previous one (if any) and the figures after them."""
    first: Id | None     # id of its first change record (None: figures only)
    last: Id             # id of the last change record it covers
    last_id: str
    figures: bytes
    raw: bytes           # as sent to a client that is up to date: encoded once for every client


KEEPALIVE = Message(first=None, last=(0, 0), last_id="", figures=b"", raw=b": keep-alive\n\n")


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    lagging: bool = False  # it fell too far behind: its next write is the whole state

    def put(self, message: Message | None) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:  # a slow client: drop what waits, send it the whole state next
            while not self.queue.empty():
                self.queue.get_nowait()
            self.lagging = True
            self.queue.put_nowait(message)


class Feed:
    """One event's broadcast in this worker; runs while at least one client listens."""

    def __init__(self, streams: "LiveStreams", layout: EventLayout) -> None:
        self.streams = streams
        self.layout = layout
        self.key = event_key(streams.live.prefix, layout.event_id, "changes")
        self.subscribers: set[Subscriber] = set()
        self.task: asyncio.Task | None = None
        self.seat_view = bool(layout_view(layout)["seat_view"])
        self._waiting: list[asyncio.Future] = []
        self._reading: asyncio.Task | None = None

    async def state(self) -> tuple[dict[str, Any], str | None]:
        """The figures and seat states read after this call began. Clients connecting at the same time
        share one read (500 dashboards opening at once cost a handful of reads, not 500); a read
        already under way is not shared with a later caller, which may have missed what it saw."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read_states())
        return await future

    async def _read_states(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                result = await self.streams.live.figures(self.layout, seats=self.seat_view)
            except BaseException as exc:
                for future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for future in batch:
                if not future.done():
                    future.set_result(result)

    def add(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def run(self) -> None:
        redis, live = self.streams.live.redis, self.streams.live
        last_id = "$"
        sent = next_tick = 0.0
        while self.subscribers:
            try:
                if last_id == "$":  # start from the newest record, whatever came before is in the figures
                    newest = await redis.xrevrange(self.key, count=1)
                    last_id = newest[0][0].decode() if newest else "0-0"
                wait_ms = max(1, int(min(BLOCK_MS, (next_tick - time.monotonic()) * 1000)))
                entries = await self._read(last_id, wait_ms)
                if entries:
                    gap = sent + self.streams.gap(len(self.subscribers)) - time.monotonic()
                    if gap > 0:  # share one message with the sales of the next few ms
                        await asyncio.sleep(gap)
                        entries += await self._read(entries[-1][0].decode(), None)
                    last_id = entries[-1][0].decode()
                elif time.monotonic() < next_tick:
                    continue
                changes = seat_changes(entries) if self.seat_view else []
                # a sale burst re-reads the inventory; the rest is re-read on the tick
                figures, _ = await live.figures(self.layout, others_max_age_s=self.streams.tick_s if entries else 0.0)
                figures["last_change_id"] = max(figures["last_change_id"], last_id, key=stream_id)
                data = orjson.dumps(figures)
                # one write per client and sale burst: the seat changes, then the figures that include them
                raw = (sse("seats", {"changes": changes}, last_id) if changes else b"") + sse("figures", data, last_id)
                self._broadcast(Message(first=stream_id(entries[0][0]) if changes else None,
                                        last=stream_id(last_id), last_id=last_id, figures=data, raw=raw))
                sent = time.monotonic()
                next_tick = sent + self.streams.tick_s
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("live figures: Redis unavailable", extra={"event_id": self.layout.event_id,
                                                                       "error": repr(exc)})
                self._broadcast(KEEPALIVE)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("live figures failed", extra={"event_id": self.layout.event_id})
                await asyncio.sleep(1.0)

    def _broadcast(self, message: Message) -> None:
        for sub in list(self.subscribers):
            sub.put(message)

    async def _read(self, after: str, block_ms: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        while True:
            got = await self.streams.live.redis.xread({self.key: after}, count=READ_MAX, block=block_ms)
            entries = got[0][1] if got else []
            out += entries
            if len(entries) < READ_MAX:
                return out
            after, block_ms = entries[-1][0].decode(), None


class LiveStreams:
    """Every `/live` stream this worker serves."""

    def __init__(self, live: LiveFigures, *, min_gap_s: float = 0.025, gap_per_stream_s: float = 0.0001,
                 tick_s: float = 1.0, resume_max: int = RESUME_MAX, queue_max: int = QUEUE_MAX) -> None:
        self.live = live
        self.min_gap_s = min_gap_s
        self.gap_per_stream_s = gap_per_stream_s
        self.tick_s = tick_s
        self.resume_max = resume_max
        self.queue_max = queue_max
        self.feeds: dict[int, Feed] = {}

    def gap(self, streams: int) -> float:
        """The least time between two broadcasts of one event: each costs ~60 µs per open stream (mostly
        the server's send), so the more streams a worker serves, the more sales share one message
        (25 ms for a few dashboards, 50 ms for 250)."""
        return self.min_gap_s + self.gap_per_stream_s * streams

    async def open(self, organisation_id: int, event_id: int, last_event_id: str | None) -> AsyncIterator[bytes]:
        """Check access and resume point, then return the stream (errors are raised before it starts)."""
        since: Id | None = None
        if last_event_id:
            try:
                since = stream_id(last_event_id)
            except ValueError:
                raise DomainError("validation_error", "Last-Event-ID must be an id this stream sent "
                                  "(<milliseconds>-<sequence>).", details={"last_event_id": last_event_id[:64]},
                                  status=422) from None
        layout = await self.live.owned(organisation_id, event_id)
        feed = self.feeds.get(event_id)
        if feed is None or feed.layout is not layout and not feed.subscribers:  # a draft's seat map may change
            feed = self.feeds[event_id] = Feed(self, layout)
        sub = Subscriber(asyncio.Queue(self.queue_max))
        feed.add(sub)  # before the first read: nothing that happens from now on is missed
        try:
            first, delivered = await self._first(feed, since)
        except BaseException:
            feed.remove(sub)
            raise
        return self._iterate(feed, sub, first, delivered)

    async def _first(self, feed: Feed, since: Id | None) -> tuple[bytes, Id]:
        layout = feed.layout
        figures, states = await feed.state()
        cur = figures["last_change_id"]
        name = self.live.names.get(layout.event_id, "")
        parts = [b"retry: %d\n\n" % RETRY_MS, sse("layout", layout_view(layout, name))]
        if feed.seat_view:
            replay = await self._replay(layout.event_id, since, cur) if since is not None else None
            parts.append(sse("seats", {"changes": replay}, cur) if replay is not None else
                         sse("seatmap", {"seats": states}, cur))
        parts.append(sse("figures", figures, cur))
        return b"".join(parts), stream_id(cur)

    async def _replay(self, event_id: int, since: Id, cur: str) -> list[list[Any]] | None:
        """The seat changes after `since` up to `cur`, or None when the stream no longer holds them all."""
        if stream_id(cur) <= since:
            return []
        key, start = event_key(self.live.prefix, event_id, "changes"), "%d-%d" % since
        pipe = self.live.redis.pipeline(transaction=False)
        pipe.xrange(key, min=start, max=start)
        pipe.xrange(key, min="(" + start, max=cur, count=self.resume_max + 1)
        anchor, entries = await pipe.execute()
        if since == (0, 0):  # the client saw no change yet: fine if the stream still starts at the first one
            anchor = not entries or entries[0][1].get(b"v") == b"1"
        if not anchor or len(entries) > self.resume_max:
            return None
        return seat_changes(entries)

    async def _iterate(self, feed: Feed, sub: Subscriber, first: bytes, delivered: Id) -> AsyncIterator[bytes]:
        try:
            yield first
            while True:
                # The feed sends figures at least every tick_s (a comment while Redis is away), so this never
                # waits long; all that waits is sent in one write (a busy worker batches by itself).
                batch = [await sub.queue.get()]
                while not sub.queue.empty():
                    batch.append(sub.queue.get_nowait())
                out: list[bytes] = []
                if sub.lagging:
                    sub.lagging = False
                    first, delivered = await self._first(feed, None)
                    out.append(first)
                for message in batch:
                    if message is None:  # the worker is stopping: the client reconnects elsewhere
                        if out:
                            yield b"".join(out)
                        return
                    if message is KEEPALIVE:
                        out.append(message.raw)
                    elif message.last < delivered or (message.last == delivered and message.first is not None):
                        # older than this client's first state: only the (newer) figures, under its own id
                        out.append(sse("figures", message.figures, "%d-%d" % delivered))
                    elif message.first is None or message.first > delivered:
                        out.append(message.raw)  # the common case: exactly what this client misses
                        delivered = message.last
                    else:  # partly seen (it connected meanwhile): only the changes it has not seen
                        changes = await self._replay(feed.layout.event_id, delivered, message.last_id) or []
                        out.append(sse("seats", {"changes": changes}, message.last_id) +
                                   sse("figures", message.figures, message.last_id))
                        delivered = message.last
                if out:
                    yield b"".join(out)
        finally:
            feed.remove(sub)

    async def stop(self) -> None:
        """Close every stream (their clients reconnect, to this worker's successor or another)."""
        for feed in list(self.feeds.values()):
            for sub in list(feed.subscribers):
                sub.put(None)
            if feed.task is not None:
                feed.task.cancel()
                try:
                    await feed.task
                except (asyncio.CancelledError, Exception):
                    pass
        self.feeds.clear()
