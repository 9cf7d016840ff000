"""Payment providers: the interface, the HTTP client for the simulator, and the guard around it.

`GuardedProvider` is what checkout uses. Per call, in this order:
1. breaker check (Redis-shared state, in-process mirror): open -> ProviderUnavailable at once;
2. a slot of the adaptive concurrency limit (limiter.py): a bounded, deadline-aware queue; a call
   that cannot be served within its budget is shed at once (ProviderUnavailable "busy", with a
   Retry-After computed from the queue);
3. the bulkhead (hard cap on concurrent calls and sockets);
4. attempts under the breaker, each cut to the rest of the time budget; only transient
   failures (timeout, connection error, 5xx) are retried, with exponential backoff and jitter,
   while the budget lasts; a 429 slows the limiter and is retried after its Retry-After, never
   counted as a fault. Declines are answers: never retried, never counted.
`authorize(capture=True)` is a one-step charge (checkout's default, `FLASHGATE_PAYMENTS_CAPTURE_ON_AUTHORIZE`):
one round trip per purchase instead of two. Every operation that changes a payment carries an idempotency key,
so a retry cannot charge twice. `void` cancels an authorization that was never captured (two-step checkouts that
cannot complete). `find` (checkout recovery, off the purchase path) reads what an authorize call did and changes
nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
import redis.asyncio as aioredis
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential,
                      wait_random)

from gateway.core.config import ProviderSettings, Settings
from gateway.core.errors import DomainError
from gateway.providers.breaker import BreakerOpen, SharedBreaker
from gateway.providers.bulkhead import Bulkhead, BulkheadFull
from gateway.providers.limiter import AdaptiveLimiter, LimiterShed

T = TypeVar("T")


@dataclass(frozen=True)
class PaymentResult:
    payment_id: str
    status: str  # "authorized" | "captured" | "refunded" | "voided"
    amount_minor: int
    currency: str
    refund_id: str | None = None


class PaymentDeclined(Exception):
    """The provider answered and said no. An answer, not a fault."""

    def __init__(self, payment_id: str | None = None, reason: str = "declined") -> None:
        super().__init__(f"payment declined ({reason})")
        self.payment_id = payment_id
        self.reason = reason

    def to_domain(self) -> DomainError:
        return DomainError("payment_declined", "The payment was declined; try another card.",
                           details={"payment_id": self.payment_id} if self.payment_id else {})


class ProviderUnavailable(Exception):
    """The provider cannot be used now; the caller may try again after `retry_after` seconds."""

    def __init__(self, retry_after: int = 1, reason: str = "unavailable") -> None:
        super().__init__(f"payment provider unavailable ({reason})")
        self.retry_after = max(1, int(retry_after))
        self.reason = reason

    def to_domain(self) -> DomainError:
        return DomainError("payments_unavailable", "The payment provider is unavailable; try again shortly.",
                           details={"retry_after": self.retry_after, "reason": self.reason},
                           headers={"Retry-After": str(self.retry_after)})


class ProviderFailure(ProviderUnavailable):
    """A transient fault of one attempt (timeout, connection error, 5xx): counted by the breaker, retried."""


class ProviderThrottled(ProviderFailure):
    """The provider answered 429 (rate limit): retried after its Retry-After while the budget allows,
    cuts the adaptive concurrency limit, and is NOT counted by the breaker. Adapters should raise it
    for 429; a `ProviderFailure` with reason "http 429" is treated the same (`is_throttled`)."""

    def __init__(self, retry_after: int = 1, reason: str = "http 429") -> None:
        super().__init__(retry_after, reason)


def is_throttled(exc: BaseException) -> bool:
    """A provider 429: an answer that asks us to slow down, not a fault."""
    return isinstance(exc, ProviderThrottled) or (isinstance(exc, ProviderFailure) and exc.reason == "http 429")


class BudgetTimeout(ProviderFailure):
    """An attempt that left with less than the fault threshold of budget (the rest went waiting on our
    side) and timed out: retried like any timeout while budget remains, but not the provider's fault —
    neither the breaker nor the limiter counts it."""


def is_our_timeout(exc: BaseException) -> bool:
    return isinstance(exc, BudgetTimeout)


class _BudgetSpent(Exception):
    """The operation's budget ran out before an attempt could be sent (not a provider fault)."""


class PaymentRejected(Exception):
    """The provider refused the request itself (unknown payment, nothing left to refund): not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_domain(self) -> DomainError:
        return DomainError("invalid_state", f"The payment provider refused the operation: {self.message}",
                           details={"provider_code": self.code})


class PaymentProvider(Protocol):
    name: str

    async def authorize(self, *, idempotency_key: str, amount_minor: int, currency: str,
                        reference: str, capture: bool = False) -> PaymentResult:
        """Authorize the amount; with `capture`, also capture it in the same call (a one-step charge,
        as card providers offer): the result's status is then `captured`. A provider that cannot may
        answer `authorized`, and the caller captures."""
        ...

    async def capture(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult: ...

    async def refund(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult: ...

    async def void(self, *, idempotency_key: str, payment_id: str) -> PaymentResult:
        """Cancel an authorization nothing was captured from (status `voided`): the buyer's funds are
        released and it can no longer be captured. PaymentRejected if the payment is not `authorized`."""
        ...

    async def find(self, *, idempotency_key: str) -> PaymentResult | None:
        """The payment the authorize call with this idempotency key created, in its current state
        (`amount_minor`: the amount captured once captured); None if the provider never created one."""
        ...


class SimulatorProvider:
    """HTTP client of the simulator's API (also the shape of a real provider adapter).

    The client is aiohttp (chosen by measurement, `bench/bench_provider_client.py`; see
    docs/performance.md). Its own connection pool is sized to `max_connections` (the bulkhead):
    a slow provider cannot take other clients' sockets. aiohttp ties a session to the running
    event loop, so the session is made at the first call, inside the loop, and closed by `aclose()`.
    """

    name = "simulator"

    def __init__(self, base_url: str, *, timeout_s: float = 2.0, connect_timeout_s: float = 0.5,
                 max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        # total: the whole exchange (pool wait, connect, send, answer); sock_connect: the TCP connect.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise RuntimeError("the payment provider client is closed")
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # a stateless API: no cookies carried between buyers
            )
        return session

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _post(self, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, data=orjson.dumps(body),
                                headers={"Idempotency-Key": key, "Content-Type": "application/json"})

    async def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._client().request(method, self.base_url + path, allow_redirects=False,
                                              **kwargs) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "1")
                content = await resp.read()
        except TimeoutError:  # aiohttp's own timeouts (total, connect) are TimeoutError subclasses
            raise ProviderFailure(1, "timeout") from None
        except aiohttp.ClientError as exc:
            raise ProviderFailure(1, f"connection: {type(exc).__name__}") from None
        if status >= 500 or status == 429:
            retry = int(retry_after) if retry_after.isdigit() else 1
            if status == 429:  # a rate limit: slow down, not a fault (not counted by the breaker)
                raise ProviderThrottled(retry, "http 429")
            raise ProviderFailure(retry, f"http {status}")
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ProviderFailure(1, "malformed answer") from None
        if status >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            if status == 409 and err.get("code") == "idempotency_key_in_use":
                # An earlier attempt with this key is still running at the provider: retry shortly (as
                # Stripe advises); it is not a fault of the provider and not a refusal.
                raise ProviderThrottled(1, "idempotency key in use")
            raise PaymentRejected(str(err.get("code", status)), str(err.get("message", "rejected")))
        return data

    async def authorize(self, *, idempotency_key: str, amount_minor: int, currency: str,
                        reference: str, capture: bool = False) -> PaymentResult:
        body: dict[str, Any] = {"amount_minor": amount_minor, "currency": currency, "reference": reference}
        if capture:
            body["capture"] = True
        data = await self._post("/v1/payments/authorize", idempotency_key, body)
        if data["status"] == "declined":
            raise PaymentDeclined(data["id"])
        return PaymentResult(data["id"], data["status"], data["amount_minor"], data["currency"])

    async def capture(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult:
        data = await self._post(f"/v1/payments/{payment_id}/capture", idempotency_key,
                                {"amount_minor": amount_minor})
        return PaymentResult(data["id"], data["status"], data["amount_minor"], data["currency"])

    async def refund(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult:
        data = await self._post(f"/v1/payments/{payment_id}/refund", idempotency_key,
                                {"amount_minor": amount_minor})
        return PaymentResult(data["id"], data["status"], data["amount_minor"], data["currency"],
                             refund_id=data["refund_id"])

    async def void(self, *, idempotency_key: str, payment_id: str) -> PaymentResult:
        data = await self._post(f"/v1/payments/{payment_id}/void", idempotency_key, {})
        return PaymentResult(data["id"], data["status"], data["amount_minor"], data["currency"])

    async def find(self, *, idempotency_key: str) -> PaymentResult | None:
        try:
            data = await self._send("GET", "/v1/payments", params={"idempotency_key": idempotency_key})
        except PaymentRejected as exc:
            if exc.code == "not_found":
                return None
            raise
        captured = data["status"] in ("captured", "refunded")
        return PaymentResult(data["id"], data["status"], data["captured_minor"] if captured else data["amount_minor"],
                             data["currency"])


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.05
    max_s: float = 0.5


class GuardedProvider:
    """Breaker + adaptive concurrency limit + bulkhead + time budget + retries around any PaymentProvider.

    Per operation, in this order (docs/providers.md, "Order of the guards"):
    1. breaker check on the in-process mirror: open -> ProviderUnavailable("breaker_open") at once;
    2. limiter slot (`AdaptiveLimiter`): beyond the adaptive limit, a bounded FIFO wait that
       respects the deadline; a caller that cannot be served in time is shed at once ->
       ProviderUnavailable("busy", Retry-After = the queue's drain time);
    3. bulkhead slot: the hard cap on tasks and sockets (the limit never exceeds it);
    4. attempts under the breaker, each cut to the rest of the budget; transient failures
       (timeout, connection error, 5xx, 429) are retried while the budget still leaves
       `queue_margin_rtts` round trips (429: not before its Retry-After). Every operation
       carries an idempotency key, so a retry cannot charge twice;
    5. the slot is released; each answer's RTT (or a 429, or a timeout) has been reported to the limiter.

    The breaker counts provider faults only: 5xx, connection errors, timeouts of calls that
    actually left with at least `fault_min_budget_s` of budget. Never: waiting or shedding in the
    limiter or bulkhead, a budget spent before sending, a timeout of a call that left with less
    (our queueing took the budget), 429 (it slows the limiter instead), declines, refusals,
    cancellations.
    """

    def __init__(self, inner: PaymentProvider, *, breaker: SharedBreaker, bulkhead: Bulkhead,
                 retry: RetryPolicy = RetryPolicy(), timeout_s: float = 2.0,
                 limiter: AdaptiveLimiter | None = None, fault_min_budget_s: float | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.retry = retry
        self.timeout_s = timeout_s
        # A timeout is the provider's fault only if the attempt had at least this long (default: a quarter
        # of the budget): a call that spent most of its budget waiting on our side and then ran out
        # says nothing about the provider.
        self.fault_min_budget_s = timeout_s / 4 if fault_min_budget_s is None else fault_min_budget_s
        if limiter is None:
            cap = bulkhead.max_concurrency
            limiter = AdaptiveLimiter(inner.name, initial=min(16, cap), min_limit=min(2, cap), max_limit=cap,
                                      latency_target_s=timeout_s / 3)
        limiter.cap(bulkhead.max_concurrency)  # the bulkhead stays the hard cap: the limiter paces below it
        self.limiter = limiter
        breaker.add_exclusions(is_throttled)  # a 429 is an answer: it slows the limiter, it is no fault
        breaker.add_exclusions(is_our_timeout)  # our budget ran out, the provider was barely given a chance
        self.attempts = 0  # attempts sent to the inner provider (tests, metrics)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    async def stats(self) -> dict[str, Any]:
        """Figures of this process for stats pages and metrics: breaker, limiter, bulkhead, attempts."""
        return {"name": self.name, "breaker": await self.breaker.snapshot(), "limiter": self.limiter.snapshot(),
                "bulkhead": {"max_concurrency": self.bulkhead.max_concurrency, "in_flight": self.bulkhead.in_flight,
                             "refused": self.bulkhead.refused},
                "attempts": self.attempts}

    async def authorize(self, *, idempotency_key: str, amount_minor: int, currency: str,
                        reference: str, capture: bool = False, deadline: float | None = None) -> PaymentResult:
        return await self._run(lambda: self.inner.authorize(idempotency_key=idempotency_key,
                                                            amount_minor=amount_minor, currency=currency,
                                                            reference=reference, capture=capture), deadline)

    async def capture(self, *, idempotency_key: str, payment_id: str, amount_minor: int,
                      deadline: float | None = None) -> PaymentResult:
        return await self._run(lambda: self.inner.capture(idempotency_key=idempotency_key, payment_id=payment_id,
                                                          amount_minor=amount_minor), deadline)

    async def refund(self, *, idempotency_key: str, payment_id: str, amount_minor: int,
                     deadline: float | None = None) -> PaymentResult:
        return await self._run(lambda: self.inner.refund(idempotency_key=idempotency_key, payment_id=payment_id,
                                                         amount_minor=amount_minor), deadline)

    async def void(self, *, idempotency_key: str, payment_id: str, deadline: float | None = None) -> PaymentResult:
        return await self._run(lambda: self.inner.void(idempotency_key=idempotency_key, payment_id=payment_id),
                               deadline)

    async def find(self, *, idempotency_key: str, deadline: float | None = None) -> PaymentResult | None:
        """Off the purchase path (checkout recovery), under the same guards as the other calls."""
        return await self._run(lambda: self.inner.find(idempotency_key=idempotency_key), deadline)

    async def _run(self, call: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        """`deadline` (time.monotonic()) may shorten the operation's budget, never extend it."""
        own = time.monotonic() + self.timeout_s
        deadline = own if deadline is None else min(deadline, own)
        try:
            await self.breaker.check()
            await self.limiter.acquire(deadline)
            try:
                async with self.bulkhead:
                    return await self._with_retries(call, deadline)
            finally:
                self.limiter.release()
        except BreakerOpen as exc:
            raise ProviderUnavailable(exc.retry_after, "breaker_open") from None
        except LimiterShed as exc:
            raise ProviderUnavailable(exc.retry_after, "busy") from None
        except BulkheadFull:
            raise ProviderUnavailable(self.limiter.retry_after(), "busy") from None
        except _BudgetSpent:
            raise ProviderUnavailable(self.limiter.retry_after(), "timeout") from None
        except ProviderFailure as exc:
            if is_throttled(exc):
                raise ProviderUnavailable(max(exc.retry_after, self.limiter.retry_after()), "throttled") from None
            raise ProviderUnavailable(exc.retry_after, exc.reason) from None

    def _budget_needed(self) -> float:
        """Budget an attempt must still have to be sent: `margin_rtts` round trips, at least 50 ms."""
        return max(0.05, self.limiter.margin_rtts * (self.limiter.rtt_short or 0.0))

    async def _with_retries(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        limiter = self.limiter

        async def attempt() -> T:
            remaining = deadline - time.monotonic()
            self.attempts += 1
            started = time.monotonic()
            sent_with = limiter.in_flight
            fair = remaining >= self.fault_min_budget_s
            try:
                async with asyncio.timeout(remaining):
                    result = await call()
            except TimeoutError:
                if not fair:
                    raise BudgetTimeout(1, "timeout") from None
                limiter.on_timeout(time.monotonic() - started)
                raise ProviderFailure(1, "timeout") from None
            except ProviderFailure as exc:
                if is_throttled(exc):
                    limiter.on_throttle(exc.retry_after)
                elif exc.reason == "timeout":  # the client's own timeout
                    if not fair:
                        raise BudgetTimeout(1, "timeout") from None
                    limiter.on_timeout(time.monotonic() - started)
                raise  # 5xx, connection errors: no latency sample (the breaker judges them)
            except (PaymentDeclined, PaymentRejected):
                limiter.observe(time.monotonic() - started, sent_with)  # an answer
                raise
            limiter.observe(time.monotonic() - started, sent_with)
            return result

        # The first attempt goes out directly: nearly every call succeeds at once, and building the retry
        # machinery for each one cost a measurable share of a purchase's CPU (docs/performance.md).
        if deadline - time.monotonic() <= 0:
            raise _BudgetSpent()  # our time, not the provider's: not sent, not counted
        try:
            return await self.breaker.call(attempt)
        except ProviderFailure as exc:
            first = exc
        return await self._retry(attempt, first, deadline)

    def _first_wait(self, exc: ProviderFailure) -> float:
        delay = self.retry.initial_s + random.uniform(0, self.retry.initial_s)
        if is_throttled(exc):
            delay = max(delay, float(exc.retry_after))  # the provider said when
        return delay

    async def _retry(self, attempt: Callable[[], Awaitable[T]], first: ProviderFailure, deadline: float) -> T:
        """Attempts 2.. after a transient failure of the first, with tenacity: exponential backoff with
        jitter (a 429 waits at least its Retry-After), stopping after `retry.attempts` in all or when
        the next wait would not leave `_budget_needed()` for a try."""
        attempts = self.retry.attempts
        delay = self._first_wait(first)
        if attempts <= 1 or time.monotonic() + delay + self._budget_needed() >= deadline:
            raise first
        await asyncio.sleep(delay)

        def stop(state: RetryCallState) -> bool:
            upcoming = state.upcoming_sleep or 0.0  # state.attempt_number counts from the second attempt
            return (state.attempt_number + 1 >= attempts
                    or time.monotonic() + upcoming + self._budget_needed() >= deadline)

        backoff = wait_exponential(multiplier=2 * self.retry.initial_s, max=self.retry.max_s) + wait_random(
            0, self.retry.initial_s)

        def wait(state: RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome is not None else None
            if exc is not None and is_throttled(exc):
                delay = max(delay, float(exc.retry_after))
            return delay

        done = False
        result: T | None = None
        async for trial in AsyncRetrying(stop=stop, reraise=True, wait=wait,
                                         retry=retry_if_exception_type(ProviderFailure)):
            with trial:
                if deadline - time.monotonic() <= 0:
                    raise _BudgetSpent()  # our time, not the provider's: not sent, not counted
                result = await self.breaker.call(attempt)
                done = True
        assert done
        return result  # type: ignore[return-value]


def build_payment_provider(runtime_or_settings: Any, redis: aioredis.Redis | None = None, *,
                           provider_settings: ProviderSettings | None = None) -> GuardedProvider:
    """The checkout's provider: simulator client behind the shared breaker, adaptive limiter,
    bulkhead and retries.

    Accepts a Runtime (its Redis and key prefix are used) or a Settings plus a Redis client.
    Close it with `await provider.aclose()` at shutdown.
    """
    settings: Settings = getattr(runtime_or_settings, "settings", runtime_or_settings)
    redis = redis if redis is not None else getattr(runtime_or_settings, "redis", None)
    if redis is None:
        raise TypeError("build_payment_provider needs a Runtime or a Redis client")
    ps = provider_settings or settings.payments
    inner = SimulatorProvider(ps.url, timeout_s=ps.timeout_s, connect_timeout_s=ps.connect_timeout_s,
                              max_connections=ps.max_concurrency)
    breaker = SharedBreaker("payments", redis=redis, key=f"{settings.redis_prefix}:breaker:payments",
                            fail_max=ps.breaker_fail_max, reset_timeout_s=ps.breaker_reset_s,
                            exclude=(PaymentDeclined, PaymentRejected, is_throttled),
                            trial_lease_s=ps.breaker_trial_lease_s or ps.timeout_s + 1.0)
    bulkhead = Bulkhead("payments", ps.max_concurrency, ps.acquire_timeout_s)
    cap = min(ps.limit_max, ps.max_concurrency)
    limiter = AdaptiveLimiter(
        "payments", initial=min(ps.limit_initial, cap), min_limit=min(ps.limit_min, cap), max_limit=cap,
        queue_max=ps.queue_max, tolerance=ps.limit_tolerance, smoothing=ps.limit_smoothing,
        latency_target_s=(ps.limit_latency_target_s if ps.limit_latency_target_s is not None
                          else ps.timeout_s / 3),
        throttle_backoff=ps.limit_throttle_backoff, margin_rtts=ps.queue_margin_rtts,
        baseline_window_s=ps.limit_baseline_window_s, rtt_floor_s=ps.limit_rtt_floor_s)
    return GuardedProvider(inner, breaker=breaker, bulkhead=bulkhead, timeout_s=ps.timeout_s, limiter=limiter,
                           retry=RetryPolicy(ps.retry_attempts, ps.retry_initial_s, ps.retry_max_s))
