"""Adaptive concurrency limit for one provider, per process, with a deadline-aware queue.

Why: a fixed bulkhead lets a provider be driven into its own queueing. Calls then pass
their time budget, the timeouts open the circuit breaker, and every buyer stalls although
the provider never failed. This limiter paces calls to what the provider takes.

No PyPI package fitted (checked: `ace-concurrency`, `adaptive-concurrency`, `aimd-limiter`,
`gentlify`: young single-author AIMD throttles, none with a deadline-aware bounded queue),
so it is written here, small. The algorithm follows Netflix concurrency-limits' *Gradient2*
with a TCP-Vegas-style baseline:

* every call that actually left and got an answer gives an RTT sample;
  `rtt_short` is an EWMA of the samples (alpha `short_alpha`);
* `rtt_noload`, the baseline, is the lowest `rtt_short` seen; it follows a lower value at
  once and drifts up towards `rtt_short` with time constant `baseline_window_s`, so a
  provider that became slower for good is re-learned (and one that got faster at once);
* gradient = clamp(min(tolerance * rtt_noload / rtt_short, latency_target / rtt_short), 0.5, 1)
  (1: latency near the baseline and below the absolute target; < 1: queueing builds up);
* new_limit = limit * gradient + sqrt(limit) (sqrt: the queueing headroom of Gradient2), applied
  with smoothing `smoothing / limit` per sample, i.e. about `smoothing` per round trip of the
  whole window; the limit does not grow while the limiter is not used (in flight < limit / 2
  and nobody waiting) nor within a provider's Retry-After;
* slow start (TCP): while callers are waiting and the answer to a call sent at the full limit
  comes back within sqrt(tolerance) of the baseline (and the gradient is 1), the limit doubles
  (so about once per round trip); the first such answer that shows queueing, a gradient below 1
  or a 429 ends it; it is re-armed after a quiet spell. A flash sale thus finds a fast
  provider's capacity in a few round trips;
* a provider 429 cuts the limit multiplicatively (`throttle_backoff`, at most once per RTT,
  like TCP), and its Retry-After holds growth back; it is not a fault for the breaker.

Callers beyond the limit wait in a FIFO queue of at most `queue_max` entries. The expected
wait of position p (0 = next) is (p + 1) * rtt_short / limit (Little's law). A caller is shed
at once (`LimiterShed`) when the queue is full or when its deadline cannot cover the expected
wait plus `margin_rtts` round trips; a waiter that can no longer make it (the estimate moved)
is shed as soon as that is known, not at its deadline (only before the first answer, when
there is no estimate yet, may a waiter wait until its deadline). A call leaves only with at
least `margin_rtts * rtt_short` of budget, so a timeout of a call that left means the provider
was slow, not that we queued it. With nothing in flight a call always leaves: a probe, so a
stale estimate can never shed everything forever. `LimiterShed.retry_after` is the time the
queue ahead needs to drain, in whole seconds (at least 1, at least the provider's pending
Retry-After).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any


class LimiterShed(Exception):
    """The call was not sent: the queue is full (`cause="queue_full"`) or its deadline cannot be met
    (`cause="deadline"`). Not a provider fault. `retry_after`: whole seconds, at least 1."""

    def __init__(self, name: str, retry_after: int, cause: str) -> None:
        super().__init__(f"limiter {name!r} shed the call ({cause})")
        self.name = name
        self.retry_after = max(1, int(retry_after))
        self.cause = cause


class _Waiter:
    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[None], deadline: float) -> None:
        self.future = future
        self.deadline = deadline


class AdaptiveLimiter:
    """`await limiter.acquire(deadline)` ... `limiter.release()`; report outcomes with
    `observe(rtt_s)` (an answer), `on_timeout(elapsed_s)`, `on_throttle(retry_after_s)`.

    Deadlines are `time.monotonic()` values. All methods run on the event loop (no locks)."""

    def __init__(self, name: str, *, initial: int = 16, min_limit: int = 2, max_limit: int = 64,
                 queue_max: int = 512, tolerance: float = 2.0, smoothing: float = 0.2,
                 latency_target_s: float | None = None, throttle_backoff: float = 0.5,
                 margin_rtts: float = 1.5, baseline_window_s: float = 30.0, short_alpha: float = 0.2,
                 rtt_floor_s: float = 0.0) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        if queue_max < 0 or tolerance < 1 or not 0 < smoothing <= 1 or not 0 < throttle_backoff < 1:
            raise ValueError("bad limiter parameters")
        self.name = name
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.queue_max = queue_max
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.latency_target_s = latency_target_s
        self.throttle_backoff = throttle_backoff
        self.margin_rtts = margin_rtts
        self.baseline_window_s = baseline_window_s
        self.short_alpha = short_alpha
        self.rtt_floor_s = rtt_floor_s  # round trips below this are never taken as queueing
        self._limit = float(min(max(initial, min_limit), max_limit))
        self.in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self.rtt_short: float | None = None
        self.rtt_noload: float | None = None
        self._noload_at = 0.0
        self._last_cut = -math.inf
        self._slow_start = True
        self.throttled_until = -math.inf
        # Figures (stats, metrics).
        self.samples = 0
        self.passed = 0           # calls let through (at once or after a wait)
        self.queued_total = 0     # calls that had to wait
        self.shed_queue_full = 0
        self.shed_deadline = 0
        self.throttled = 0        # 429 answers seen
        self.timeouts = 0         # calls that left and timed out

    # -- figures -----------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return max(self.min_limit, min(self.max_limit, int(self._limit)))

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def shed(self) -> int:
        return self.shed_queue_full + self.shed_deadline

    def snapshot(self) -> dict[str, Any]:
        """Figures for stats pages and metrics (per process)."""
        ms = (lambda v: None if v is None else round(v * 1000, 3))
        return {"name": self.name, "limit": self.limit, "limit_exact": round(self._limit, 3),
                "in_flight": self.in_flight, "queued": self.queued, "passed": self.passed,
                "queued_total": self.queued_total, "shed": self.shed, "shed_queue_full": self.shed_queue_full,
                "shed_deadline": self.shed_deadline, "throttled": self.throttled, "timeouts": self.timeouts,
                "samples": self.samples, "rtt_short_ms": ms(self.rtt_short), "rtt_noload_ms": ms(self.rtt_noload),
                "expected_wait_ms": ms(self.expected_wait(self.queued))}

    def expected_wait(self, position: int) -> float:
        """Seconds until the waiter at `position` (0 = next) gets a slot, by Little's law: `limit`
        slots free up per round trip (in slow start the limit doubles per round trip)."""
        rtt = self.rtt_short
        if rtt is None:
            return 0.0
        ahead = position + 1
        limit = float(self.limit)
        waited = 0.0
        if self._slow_start:
            while limit < self.max_limit and ahead > limit:
                ahead -= limit
                waited += rtt
                limit = min(float(self.max_limit), 2 * limit)
        return waited + ahead * rtt / limit

    def retry_after(self) -> int:
        """Whole seconds a shed caller should wait: the queue's drain time, the provider's Retry-After."""
        wait = self.expected_wait(self.queued)
        wait = max(wait, self.throttled_until - time.monotonic())
        return max(1, math.ceil(wait))

    def _need(self) -> float:
        """Budget a caller must have left, after its expected wait, to be queued (and kept queued)."""
        return self.margin_rtts * (self.rtt_short or 0.0)

    def _may_leave(self, remaining_s: float) -> bool:
        """A call leaves only if `margin_rtts` round trips fit in its budget; with nothing in flight it
        always leaves (a probe: its answer refreshes the estimate, so a stale one cannot shed forever)."""
        return self.in_flight == 0 or remaining_s >= self._need()

    # -- acquire / release ---------------------------------------------------------------------
    def _shed(self, cause: str) -> LimiterShed:
        if cause == "queue_full":
            self.shed_queue_full += 1
        else:
            self.shed_deadline += 1
        return LimiterShed(self.name, self.retry_after(), cause)

    async def acquire(self, deadline: float) -> None:
        """Take a slot, waiting in FIFO order at most until the deadline allows; else LimiterShed."""
        now = time.monotonic()
        if not self._waiters and self.in_flight < self.limit:
            if not self._may_leave(deadline - now):
                raise self._shed("deadline")
            self.in_flight += 1
            self.passed += 1
            return
        if len(self._waiters) >= self.queue_max:
            raise self._shed("queue_full")
        if now + self.expected_wait(len(self._waiters)) + self._need() > deadline:
            raise self._shed("deadline")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, deadline)
        self._waiters.append(waiter)
        self.queued_total += 1
        latest = deadline - self._need()
        try:
            async with asyncio.timeout(max(0.0, latest - time.monotonic())):
                await future
        except TimeoutError:
            self._forget(waiter)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()  # granted at the last moment: pass the slot on
            raise self._shed("deadline") from None
        except BaseException:  # cancelled (buyer gone, shutdown) or shed by the scan
            self._forget(waiter)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()
            raise
        self.passed += 1

    def release(self) -> None:
        """Give the slot back (after the call's outcome was reported)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._wake()

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _wake(self) -> None:
        """Grant free slots to the head of the queue; shed, from the tail, waiters that cannot make it."""
        now = time.monotonic()
        need = self._need()
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            if not self._may_leave(waiter.deadline - now):
                waiter.future.set_exception(self._shed("deadline"))
                continue
            self.in_flight += 1
            waiter.future.set_result(None)
        # The estimate may have moved: the last waiters are the first to miss their deadline.
        while self._waiters:
            waiter = self._waiters[-1]
            if waiter.future.done():
                self._waiters.pop()
                continue
            if now + self.expected_wait(len(self._waiters) - 1) + need <= waiter.deadline:
                break
            self._waiters.pop()
            waiter.future.set_exception(self._shed("deadline"))

    # -- outcomes ------------------------------------------------------------------------------------
    def cap(self, max_limit: int) -> None:
        """Lower the upper bound (e.g. to the bulkhead's size)."""
        self.max_limit = max(1, min(self.max_limit, max_limit))
        self.min_limit = min(self.min_limit, self.max_limit)
        self._limit = min(self._limit, float(self.max_limit))

    def observe(self, rtt_s: float, in_flight_at_send: int | None = None, *, answered: bool = True) -> None:
        """An answer came back after `rtt_s` (success, decline, refusal): adapt the limit.
        `in_flight_at_send`: calls in flight when this one left (this one included).
        `answered=False`: no answer (a timeout), the sample may only shrink the limit."""
        now = time.monotonic()
        rtt_s = max(rtt_s, 1e-6)
        self.samples += 1
        short = rtt_s if self.rtt_short is None else self.rtt_short + self.short_alpha * (rtt_s - self.rtt_short)
        self.rtt_short = short
        if self.rtt_noload is None or short <= self.rtt_noload:
            self.rtt_noload = short
        else:
            drift = 1.0 - math.exp(-max(0.0, now - self._noload_at) / self.baseline_window_s)
            self.rtt_noload += (short - self.rtt_noload) * drift
        self._noload_at = now
        # The baseline is at least the floor: a round trip of a few ms that grows to 15 ms on a busy
        # gateway measures this process's own event loop, not queueing at the provider.
        base = max(self.rtt_noload, self.rtt_floor_s)
        gradient = self.tolerance * base / max(short, base)
        if self.latency_target_s:
            gradient = min(gradient, self.latency_target_s / short)
        gradient = max(0.5, min(1.0, gradient))
        limit = self._limit
        if not answered:
            self._slow_start = False
            if gradient >= 1.0:
                self._wake()
                return
        if gradient >= 1.0:
            idle = self.in_flight < limit / 2 and not self._waiters
            if idle:
                self._slow_start = True  # after a quiet spell, ramp up fast again
            if idle or now < self.throttled_until:
                self._wake()
                return
            if self._slow_start and self._waiters:
                # Slow start (TCP): an answer to a call sent at the full limit, still near the baseline,
                # with callers waiting: double the limit (so about once per round trip). An answer at
                # the full limit that shows queueing ends slow start.
                full = in_flight_at_send is None or in_flight_at_send >= self.limit
                if full and rtt_s <= base * math.sqrt(self.tolerance):
                    self._limit = min(float(self.max_limit), 2.0 * limit)
                    self._wake()
                    return
                if full:
                    self._slow_start = False
        else:
            self._slow_start = False
        target = limit * gradient + math.sqrt(limit)
        step = min(1.0, self.smoothing / max(1.0, limit))
        self._limit = max(float(self.min_limit), min(float(self.max_limit), limit + (target - limit) * step))
        self._wake()

    def on_timeout(self, elapsed_s: float) -> None:
        """A call that left got no answer in time: a (lower bound) latency sample."""
        self.timeouts += 1
        self.observe(elapsed_s, answered=False)

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        """The provider answered 429: multiplicative decrease (once per RTT), growth held back."""
        now = time.monotonic()
        self.throttled += 1
        self._slow_start = False
        if now - self._last_cut >= (self.rtt_short or 0.0):
            self._limit = max(float(self.min_limit), self._limit * self.throttle_backoff)
            self._last_cut = now
        if retry_after_s:
            self.throttled_until = max(self.throttled_until, now + retry_after_s)
        self._wake()
