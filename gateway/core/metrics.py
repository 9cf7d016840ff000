"""Prometheus metrics (docs/operations.md, "Metrics and alerts").

Two kinds of figures:

- counted in-process, per request (route latency, Redis call latency, answers served from process
  memory, scan results, rate-limit refusals, snapshot age): a request adds to plain per-process lists
  whose prometheus-client label children were made once, and each worker hands the sums over every
  `FLUSH_S` ("batching" below). Under `flashgate serve` every granian worker writes them to
  memory-mapped files in a per-run directory (prometheus-client's multiprocess mode,
  `PROMETHEUS_MULTIPROC_DIR`), and whichever worker answers `/metrics` adds up all of them;
- read from Redis at scrape time (queue, ledger, breakers, pacing, notifications): they already live
  there for every worker, so nothing is counted per request (`redis_families`).

Event and organisation labels are bounded: the `metrics_event_labels` most recent events (highest
ids) among those on sale or with unwritten ledger entries get their own label, the rest share
`event="other"` (and `organisation="other"`).
"""

from __future__ import annotations

import asyncio
import glob
import math
import os
import re
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from gateway.wiring import Gateway

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# FLASHGATE_METRICS_ENABLED=0 turns the in-process figures off (each becomes a no-op; /metrics still
# serves the Redis figures): read from the environment when this module is imported.
ENABLED = os.environ.get("FLASHGATE_METRICS_ENABLED", "1").strip().lower() not in ("0", "false", "no", "off")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "flashgate_http_request_duration_seconds",
    "Time from the request reaching the gateway to its answer, per route template and status class.",
    ("method", "route", "status"), buckets=_LATENCY_BUCKETS)
REDIS_SECONDS = Histogram(
    "flashgate_redis_call_duration_seconds",
    "Round trip of one Lua script call as the caller sees it (pipelining wait included), per script.",
    ("script",), buckets=_LATENCY_BUCKETS)
IN_PROCESS = Counter(
    "flashgate_answered_in_process_total",
    "Answers served from process memory without a Redis or Postgres call (availability from the snapshot, "
    "queue polls from the signed token and the cached counter).", ("route",))
SCANS = Counter("flashgate_scans_total", "Door scans answered, by result (online and offline uploads).",
                ("result",))
RATE_LIMITED = Counter("flashgate_rate_limited_total",
                       "Requests refused with 429 rate_limited, by the limit that refused them.", ("scope",))
PG_READS = Counter("flashgate_pg_reads_total",
                   "Organiser reads that tolerate replica lag, by where they ran: replica, primary (no replica "
                   "configured) or primary_fallback (replica down or lagging too much).", ("target",))
_SNAPSHOT_AGE = Gauge("flashgate_snapshot_age_seconds",
                      "Age of the oldest availability snapshot a live worker serves from.",
                      multiprocess_mode="livemax")

# -- batching: a request adds to plain lists; `flush` hands the sums to prometheus-client ------------------
#
# A prometheus-client observation in multiprocess mode costs ~1.3 µs (a lock and a write to the mapped
# file); a hot request would pay that two or three times. Requests add to per-process lists instead
# (~0.2 µs) and each worker flushes them every `FLUSH_S` (and before answering a scrape), so the exposed
# figures are at most that much behind.

FLUSH_S = 1.0
_BOUNDS = (*_LATENCY_BUCKETS, math.inf)
_batches: list[Any] = []


class _Histogram:
    """Observations of one histogram child, counted per bucket until the next flush."""

    __slots__ = ("child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0
        _batches.append(self)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts, self.total = [0] * len(_BOUNDS), 0.0
        # prometheus-client keeps a histogram child as one value per bucket (not cumulative) and a sum;
        # adding n to a bucket is what n observations falling in it do.
        buckets = self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        self.child._sum.inc(total)


class _Counter:
    """Increments of one counter child until the next flush."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0
        _batches.append(self)

    def inc(self, amount: int = 1) -> None:
        self.n += amount

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self.child.inc(n)


def flush() -> None:
    """Hand this process's batched figures to prometheus-client (the event loop's thread only)."""
    for batch in _batches:
        batch.flush()


async def flush_every(interval_s: float = FLUSH_S) -> None:
    """Flush forever (a task of each gateway worker, started by the app's lifespan)."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            flush()
    finally:
        flush()


class _Off:
    """A figure that is not kept (FLASHGATE_METRICS_ENABLED=0)."""

    route = ""

    def observe(self, *args: Any) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


_OFF = _Off()
SNAPSHOT_AGE: Any = _SNAPSHOT_AGE if ENABLED else _OFF

_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# The routes the edge answers itself (gateway/api/hot.py), by handler name.
HOT_ROUTES = {
    "buyer_token": ("POST", "/v1/buyer-token"),
    "availability": ("GET", "/v1/events/{event_id}/availability"),
    "create_hold": ("POST", "/v1/events/{event_id}/holds"),
    "release_hold": ("DELETE", "/v1/holds/{hold_id}"),
    "checkout": ("POST", "/v1/holds/{hold_id}/checkout"),
    "join": ("POST", "/v1/events/{event_id}/queue"),
    "poll": ("GET", "/v1/events/{event_id}/queue"),
    "scan": ("POST", "/v1/scan"),
    "scan_batch": ("POST", "/v1/scan/batch"),
    "scan_manifest": ("GET", "/v1/scan/manifest"),
}


class RouteTimer:
    """The latency series of one route, one child per status class, made once."""

    __slots__ = ("method", "route", "_children")

    def __init__(self, method: str, route: str) -> None:
        self.method = method
        self.route = route
        self._children = {c: _Histogram(REQUEST_SECONDS.labels(method, route, _CLASSES[c])) for c in (2, 4, 5)}

    def observe(self, status: int, seconds: float) -> None:
        batch = self._children.get(status // 100)
        if batch is None:
            batch = self._children[status // 100] = _Histogram(REQUEST_SECONDS.labels(
                self.method, self.route, _CLASSES.get(status // 100, "5xx")))
        batch.observe(seconds)


HOT_TIMERS = {name: RouteTimer(*route) for name, route in HOT_ROUTES.items()} if ENABLED else {}
_framework_timers: dict[tuple[str, str], RouteTimer] = {}


def framework_timer(method: str, route: str | None) -> RouteTimer:
    """The timer of a FastAPI route template (`unmatched` for paths no route matched: raw paths never
    become labels)."""
    if not ENABLED:
        return _OFF  # type: ignore[return-value]
    key = (method if method in _METHODS else "OTHER", route or "unmatched")
    timer = _framework_timers.get(key)
    if timer is None:
        timer = _framework_timers[key] = RouteTimer(*key)
    return timer


IN_PROCESS_AVAILABILITY: Any = _Counter(IN_PROCESS.labels(HOT_ROUTES["availability"][1])) if ENABLED else _OFF
IN_PROCESS_POLL: Any = _Counter(IN_PROCESS.labels(HOT_ROUTES["poll"][1])) if ENABLED else _OFF
_scan_children: dict[str, Any] = {r: _Counter(SCANS.labels(r)) for r in (
    "admitted", "duplicate", "invalid", "wrong_event", "void", "exited", "not_inside")}
_rate_children: dict[str, Any] = {}


def count_scan(result: str) -> None:
    if not ENABLED:
        return
    child = _scan_children.get(result)
    if child is None:
        child = _scan_children.get("other") or _scan_children.setdefault("other", _Counter(SCANS.labels("other")))
    child.inc()


_pg_read_children: dict[str, Any] = {}


def count_pg_read(target: str) -> None:
    """One organiser read routed by gateway/db/replica.py (`replica`, `primary`, `primary_fallback`)."""
    if not ENABLED:
        return
    child = _pg_read_children.get(target)
    if child is None:
        child = _pg_read_children[target] = _Counter(PG_READS.labels(target))
    child.inc()


def count_rate_limited(scope: str) -> None:
    if not ENABLED:
        return
    child = _rate_children.get(scope)
    if child is None:
        child = _rate_children[scope] = _Counter(RATE_LIMITED.labels(scope))
    child.inc()


_script_batches: dict[str, Any] = {}


def script_timers(names: Iterable[str]) -> dict[str, Any]:
    """One latency child per Lua script (made once per process, shared by every `Scripts`)."""
    if not ENABLED:
        return {name: _OFF for name in names}
    for name in names:
        if name not in _script_batches:
            _script_batches[name] = _Histogram(REDIS_SECONDS.labels(name))
    return {name: _script_batches[name] for name in names}


# -- the per-run directory of `flashgate serve` (gateway/cli.py empties it and sets the variable) -----------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


_PID_FILE = re.compile(r"_(\d+)\.db$")


def _forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that died (granian respawns them under new pids); their
    counters stay, so totals never go backwards."""
    from prometheus_client import multiprocess

    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _PID_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass


# -- scrape-time figures from Redis ----------------------------------------------------------------------


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def bounded_events(event_ids: Iterable[int], n: int) -> tuple[list[int], list[int]]:
    """(events with a label of their own: the `n` most recent, i.e. highest ids; the rest)."""
    ordered = sorted(set(event_ids), reverse=True)
    return ordered[:n], ordered[n:]


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


async def _ledger_figures(redis: Any, stream: str, now_ms: int) -> tuple[int, float]:
    """(entries not yet written to Postgres: pending + undelivered, seconds since the oldest of them)."""
    from gateway.store.keys import LEDGER_GROUP

    try:
        groups = await redis.xinfo_groups(stream)
    except Exception:  # no stream yet
        return 0, 0.0
    group = next((g for g in groups if g.get("name") in (LEDGER_GROUP, LEDGER_GROUP.encode())), None)
    if group is None:  # the worker has not created its group: everything is unwritten
        first = await redis.xrange(stream, count=1)
        length = await redis.xlen(stream)
        return length, (now_ms - int(first[0][0].split(b"-")[0])) / 1000 if first else 0.0
    pending, lag = int(group.get("pending") or 0), group.get("lag")
    if lag is None:
        lag = 0  # unknown (entries deleted): the pending figure still tells
    oldest = None
    if pending:
        summary = await redis.xpending(stream, LEDGER_GROUP)
        oldest = summary.get("min")
    elif lag:
        last = group.get("last-delivered-id") or b"0-0"
        last = last.decode() if isinstance(last, bytes) else last
        nxt = await redis.xrange(stream, min="(" + last, count=1)
        oldest = nxt[0][0] if nxt else None
    age = 0.0
    if oldest is not None:
        raw = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        age = max(0.0, (now_ms - int(raw.split("-")[0])) / 1000)
    return pending + int(lag), age


async def redis_families(gw: Gateway) -> list[Metric]:
    """The figures that live in Redis, read now. `flashgate_redis_up` is 0 when Redis did not answer."""
    from gateway.orders import notify
    from gateway.organisers.live import _pacing
    from gateway.providers.breaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN
    from gateway.store.keys import breaker_key, event_key, ledger_dirty_set, on_sale_set, pacing_key
    from gateway.waiting_room.admin import queue_stats

    runtime, redis, prefix = gw.runtime, gw.runtime.redis, gw.runtime.prefix
    s = gw.settings
    up = _gauge("flashgate_redis_up", "1 when Redis answered this scrape's reads, else 0.")
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.smembers(on_sale_set(prefix))
        pipe.smembers(ledger_dirty_set(prefix))
        for name in ("payments", "smtp"):
            pipe.hgetall(breaker_key(prefix, name))
        pipe.hgetall(pacing_key(prefix, "payments"))
        pipe.zcard(notify.retry_key(runtime))
        pipe.xlen(notify.dead_key(runtime))
        on_sale, dirty, pay_breaker, smtp_breaker, pacing_raw, retry_waiting, dead = await pipe.execute()
        on_sale_ids = {int(x) for x in on_sale}
        ledger_ids = on_sale_ids | {int(x) for x in dirty}
        own, rest = bounded_events(ledger_ids, s.metrics_event_labels)
        pipe = redis.pipeline(transaction=False)
        for event_id in own:
            pipe.hget(event_key(prefix, event_id, "info"), "organisation_id")
        owners = dict(zip(own, await pipe.execute()))
        now_ms = int(time.time() * 1000)
        queues, ledgers = await asyncio.gather(
            asyncio.gather(*(queue_stats(runtime, e) for e in sorted(on_sale_ids))),
            asyncio.gather(*(_ledger_figures(redis, event_key(prefix, e, "ledger"), now_ms)
                             for e in sorted(ledger_ids))))
    except Exception:
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)

    def labels(event_id: int) -> list[str]:
        if event_id in owners:
            org = owners[event_id]
            return [str(event_id), org.decode() if org else "unknown"]
        return ["other", "other"]

    ev = ("event", "organisation")
    q_len = _gauge("flashgate_queue_length", "Buyers waiting in the waiting room (joined, not yet admitted).", ev)
    q_rate = _gauge("flashgate_queue_admission_rate_per_second",
                    "Admission rate in force (the organiser's rate after backpressure).", ev)
    q_admitted = _gauge("flashgate_queue_admitted", "Buyers admitted so far.", ev)
    sums: dict[tuple[str, ...], list[float]] = {}
    for event_id, q in zip(sorted(on_sale_ids), queues):
        if not q["enabled"]:
            continue
        acc = sums.setdefault(tuple(labels(event_id)), [0.0, 0.0, 0.0])
        acc[0] += q["length"]
        rate = q["rate"]["effective_per_s"]
        acc[1] += 0.0 if q.get("paused") or rate == float("inf") else rate
        acc[2] += q["admitted"]
    for key, (length, rate, admitted) in sums.items():
        q_len.add_metric(list(key), length)
        q_rate.add_metric(list(key), rate)
        q_admitted.add_metric(list(key), admitted)

    l_pending = _gauge("flashgate_ledger_pending_entries",
                       "Accepted sales and scans in the Redis ledger stream not yet written to Postgres.", ev)
    l_lag = _gauge("flashgate_ledger_lag_seconds",
                   "Age of the oldest ledger entry not yet written to Postgres (0 when all are written).", ev)
    ledger_sums: dict[tuple[str, ...], list[float]] = {}
    for event_id, (pending, age) in zip(sorted(ledger_ids), ledgers):
        acc = ledger_sums.setdefault(tuple(labels(event_id)), [0.0, 0.0])
        acc[0] += pending
        acc[1] = max(acc[1], age)
    for key, (pending, age) in ledger_sums.items():
        l_pending.add_metric(list(key), pending)
        l_lag.add_metric(list(key), age)

    breaker = _gauge("flashgate_breaker_state", "Circuit-breaker state shared by all workers: 1 for the state it "
                     "is in, 0 for the others.", ("breaker", "state"))
    for name, raw in (("payments", pay_breaker), ("smtp", smtp_breaker)):
        state = (raw.get(b"state") or STATE_CLOSED.encode()).decode()
        for candidate in (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN):
            breaker.add_metric([name, candidate], 1 if state == candidate else 0)

    pacing = _pacing(pacing_raw)
    capacity = pacing["workers"] * gw.payments.bulkhead.max_concurrency
    families: list[Metric] = [up, q_len, q_rate, q_admitted, l_pending, l_lag, breaker]
    for key, doc in (("limit", "Adaptive concurrency limit of payment calls, summed over live workers."),
                     ("in_flight", "Payment calls in flight, summed over live workers."),
                     ("queued", "Checkouts waiting for a payment slot, summed over live workers."),
                     ("shed", "Checkouts shed by pacing (queue full or deadline) since the live workers started."),
                     ("throttled", "Provider 429 answers since the live workers started."),
                     ("timeouts", "Payment calls that timed out since the live workers started.")):
        g = _gauge(f"flashgate_payments_pacing_{key}", doc)
        g.add_metric([], pacing[key])
        families.append(g)
    saturation = _gauge("flashgate_payments_bulkhead_saturation",
                        "Payment calls in flight over the bulkhead's capacity (max_concurrency per live worker).")
    saturation.add_metric([], pacing["in_flight"] / capacity if capacity else 0.0)
    retries = _gauge("flashgate_notify_retry_waiting", "Notifications that failed and wait for their next try.")
    retries.add_metric([], retry_waiting)
    dead_letters = _gauge("flashgate_notify_dead_letters",
                          "Notifications that failed every attempt (dead-letter stream, visible to organisers).")
    dead_letters.add_metric([], dead)
    families += [saturation, retries, dead_letters]
    return families


async def replica_families(gw: Gateway) -> list[Metric]:
    """The Postgres read replica, measured at scrape time (none when `DATABASE_REPLICA_URL` is unset)."""
    reads = gw.runtime.reads
    if not reads.configured:
        return []
    state = await reads.state(fresh=True)
    up = _gauge("flashgate_pg_replica_up", "1 when the Postgres read replica answered this scrape's check, else 0.")
    up.add_metric([], 1 if state.up else 0)
    used = _gauge("flashgate_pg_replica_in_use",
                  "1 when organiser reads go to the replica, 0 when they fall back to the primary.")
    used.add_metric([], 1 if state.usable else 0)
    families: list[Metric] = [up, used]
    if state.lag_s is not None:
        lag = _gauge("flashgate_pg_replica_lag_seconds",
                     "Replay lag of the read replica (0 when it has replayed all the primary had written).")
        lag.add_metric([], state.lag_s)
        families.append(lag)
    if state.lag_bytes is not None:
        behind = _gauge("flashgate_pg_replica_lag_bytes", "WAL bytes the read replica has not replayed yet.")
        behind.add_metric([], state.lag_bytes)
        families.append(behind)
    return families


async def render(gw: Gateway) -> bytes:
    """The text exposition: every worker's in-process figures added up, then the Redis figures."""
    flush()  # this worker's figures up to now; the others' are at most FLUSH_S behind
    extra = CollectorRegistry()
    extra.register(_Families(await redis_families(gw) + await replica_families(gw)))
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        _forget_dead_workers(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        local = generate_latest(registry)
    else:
        local = generate_latest(REGISTRY)
    return local + generate_latest(extra)


__all__ = ["HOT_TIMERS", "RouteTimer", "framework_timer", "count_scan", "count_rate_limited", "count_pg_read",
           "script_timers", "render", "bounded_events", "SNAPSHOT_AGE", "IN_PROCESS_AVAILABILITY",
           "IN_PROCESS_POLL", "CONTENT_TYPE", "flush", "flush_every"]
