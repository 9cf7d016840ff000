"""Payment providers: the interface, the HTTP client for the simulator, and the guard around it.

`GuardedProvider` is what checkout uses. Per call, in this order:
1. breaker check (Redis-shared state, in-process mirror): open -> ProviderUnavailable at once;
2. bulkhead slot (bounded concurrency, short wait) -> ProviderUnavailable when full;
3. attempts under the breaker, each cut to the rest of the time budget; only transient
   failures (timeout, connection error, 5xx/429) are retried, with exponential backoff
   and jitter, while the budget lasts. Declines are answers: never retried, never counted.
All three operations carry an idempotency key, so a retry cannot charge twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
import redis.asyncio as aioredis
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential,
                      wait_random)

from gateway.core.config import ProviderSettings, Settings
from gateway.core.errors import DomainError
from gateway.providers.breaker import BreakerOpen, SharedBreaker
from gateway.providers.bulkhead import Bulkhead, BulkheadFull


@dataclass(frozen=True)
class PaymentResult:
    payment_id: str
    status: str  # "authorized" | "captured" | "refunded"
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
                        reference: str) -> PaymentResult: ...

    async def capture(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult: ...

    async def refund(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult: ...


class SimulatorProvider:
    """HTTP client of the simulator's API (also the shape of a real provider adapter)."""

    name = "simulator"

    def __init__(self, base_url: str, *, timeout_s: float = 2.0, connect_timeout_s: float = 0.5,
                 max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        # Its own pool, sized to the bulkhead: a slow provider cannot take other clients' sockets.
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self._client.post(path, content=orjson.dumps(body),
                                           headers={"Idempotency-Key": key, "Content-Type": "application/json"})
        except httpx.TimeoutException:
            raise ProviderFailure(1, "timeout") from None
        except httpx.TransportError as exc:
            raise ProviderFailure(1, f"connection: {type(exc).__name__}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            retry_after = resp.headers.get("Retry-After", "1")
            raise ProviderFailure(int(retry_after) if retry_after.isdigit() else 1, f"http {resp.status_code}")
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise ProviderFailure(1, "malformed answer") from None
        if resp.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            raise PaymentRejected(str(err.get("code", resp.status_code)), str(err.get("message", "rejected")))
        return data

    async def authorize(self, *, idempotency_key: str, amount_minor: int, currency: str,
                        reference: str) -> PaymentResult:
        data = await self._post("/v1/payments/authorize", idempotency_key,
                                {"amount_minor": amount_minor, "currency": currency, "reference": reference})
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


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.05
    max_s: float = 0.5


class GuardedProvider:
    """Breaker + bulkhead + time budget + retries around any PaymentProvider."""

    def __init__(self, inner: PaymentProvider, *, breaker: SharedBreaker, bulkhead: Bulkhead,
                 retry: RetryPolicy = RetryPolicy(), timeout_s: float = 2.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.retry = retry
        self.timeout_s = timeout_s
        self.attempts = 0  # attempts sent to the inner provider (tests, metrics)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    async def authorize(self, *, idempotency_key: str, amount_minor: int, currency: str,
                        reference: str) -> PaymentResult:
        return await self._run(lambda: self.inner.authorize(idempotency_key=idempotency_key,
                                                            amount_minor=amount_minor, currency=currency,
                                                            reference=reference))

    async def capture(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult:
        return await self._run(lambda: self.inner.capture(idempotency_key=idempotency_key, payment_id=payment_id,
                                                          amount_minor=amount_minor))

    async def refund(self, *, idempotency_key: str, payment_id: str, amount_minor: int) -> PaymentResult:
        return await self._run(lambda: self.inner.refund(idempotency_key=idempotency_key, payment_id=payment_id,
                                                         amount_minor=amount_minor))

    async def _run(self, call: Callable[[], Awaitable[PaymentResult]]) -> PaymentResult:
        deadline = time.monotonic() + self.timeout_s
        try:
            await self.breaker.check()
            async with self.bulkhead:
                return await self._with_retries(call, deadline)
        except BreakerOpen as exc:
            raise ProviderUnavailable(exc.retry_after, "breaker_open") from None
        except BulkheadFull:
            raise ProviderUnavailable(1, "busy") from None
        except ProviderFailure as exc:
            raise ProviderUnavailable(exc.retry_after, exc.reason) from None

    async def _with_retries(self, call: Callable[[], Awaitable[PaymentResult]], deadline: float) -> PaymentResult:
        attempts = self.retry.attempts

        def stop(state: RetryCallState) -> bool:
            # Stop after the last attempt, or when the next wait would not leave time for a try.
            upcoming = state.upcoming_sleep or 0.0
            return state.attempt_number >= attempts or time.monotonic() + upcoming >= deadline - 0.05

        async def attempt() -> PaymentResult:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderFailure(1, "timeout")
            self.attempts += 1
            try:
                async with asyncio.timeout(remaining):
                    return await call()
            except TimeoutError:
                raise ProviderFailure(1, "timeout") from None

        result: PaymentResult | None = None
        async for trial in AsyncRetrying(stop=stop, reraise=True,
                                         retry=retry_if_exception_type(ProviderFailure),
                                         wait=wait_exponential(multiplier=self.retry.initial_s,
                                                               max=self.retry.max_s)
                                         + wait_random(0, self.retry.initial_s)):
            with trial:
                result = await self.breaker.call(attempt)
        assert result is not None
        return result


def build_payment_provider(runtime_or_settings: Any, redis: aioredis.Redis | None = None, *,
                           provider_settings: ProviderSettings | None = None) -> GuardedProvider:
    """The checkout's provider: simulator client behind the shared breaker, bulkhead and retries.

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
                            exclude=(PaymentDeclined, PaymentRejected))
    bulkhead = Bulkhead("payments", ps.max_concurrency, ps.acquire_timeout_s)
    return GuardedProvider(inner, breaker=breaker, bulkhead=bulkhead, timeout_s=ps.timeout_s,
                           retry=RetryPolicy(ps.retry_attempts, ps.retry_initial_s, ps.retry_max_s))
