"""Checkout: a hold becomes a paid order with tickets, exactly once per Idempotency-Key.

Steps: begin_checkout (hold -> paying, expiry extended) -> authorize -> capture ->
confirm (Lua: held -> sold + ledger entry) -> tickets. The order id is derived from
(event, hold, buyer, key), and every provider call carries an idempotency key derived
from the order id, so a retry, or a second process taking over a crashed attempt,
repeats the same calls and gets the same answers. A payment taken for a hold that can
no longer be confirmed is refunded at once and the refund is recorded in the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from gateway.core.errors import DomainError
from gateway.core.sealing import Sealer
from gateway.core.tokens import TokenSigner
from gateway.orders.confirmations import Confirmations
from gateway.orders.tickets import EventInfo
from gateway.providers.payments import PaymentDeclined, PaymentProvider, ProviderUnavailable
from gateway.sale.snapshots import SnapshotManager
from gateway.store.scripts import Scripts
from gateway.sale import inventory
from gateway.sale.holds import event_of_hold
from gateway.waiting_room.admin import report_checkout_latency
from gateway.orders.tickets import event_info, order_id_for, order_total, public_ticket, ticket_rows
from gateway.store.keys import checkout_lock, checkout_records, event_key, ledger_dirty_set

log = logging.getLogger("flashgate.checkout")

LOCK_MS = 30_000
WAIT_FOR_OTHER_S = 10.0
FINAL_CODES = {"payment_declined", "hold_expired", "hold_not_found", "forbidden", "invalid_state"}


def fingerprint(hold_id: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps({"hold": hold_id, "body": body}, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _settled(raw: bytes, fp: str, key: str) -> dict[str, Any] | None:
    """The stored answer of a finished attempt (or its stored refusal, raised); None while unfinished."""
    rec = orjson.loads(raw)
    if rec["fp"] != fp:
        raise DomainError("idempotency_conflict", "This Idempotency-Key was used with another request.",
                          details={"idempotency_key": key}, status=422)
    if rec["state"] == "done":
        return rec["result"]
    if rec["state"] == "failed":
        err = rec["error"]
        raise DomainError(err["code"], err["message"], details=err["details"])
    return None


def attempt_lock(redis: Redis, prefix: str, event_id: int, field: str) -> Lock:
    """The lock of one checkout attempt (buyer + key): taken with SET NX PX and a random token,
    released only by its owner (redis-py's Lock: the release is one owner-checked script)."""
    return redis.lock(checkout_lock(prefix, event_id, field), timeout=LOCK_MS / 1000, blocking=False)


async def let_go(lock: Lock) -> None:
    try:
        await lock.release()
    except (LockError, RedisError):  # expired and maybe taken by another attempt: not ours to delete
        pass


async def refund_orphan(*, redis: Redis, provider: PaymentProvider, prefix: str, event_id: int, order_id: str,
                        hold_id: str, payment_id: str, amount: int, currency: str, reason: str) -> None:
    """Refund a payment whose hold can no longer be confirmed, and record the refund in the ledger."""
    refund = await provider.refund(idempotency_key=f"{order_id}:refund", payment_id=payment_id,
                                   amount_minor=amount)
    entry = {"order_id": order_id, "hold_id": hold_id, "payment_id": payment_id, "refund_id": refund.refund_id,
             "amount_minor": amount, "currency": currency, "reason": reason, "provider": provider.name,
             "at_ms": int(time.time() * 1000)}
    await redis.xadd(event_key(prefix, event_id, "ledger"), {"k": "orphan_refund", "d": orjson.dumps(entry),
                                                             "o": b"{}"})
    await redis.sadd(ledger_dirty_set(prefix), event_id)  # after the XADD: the ledger worker polls it
    log.info("payment refunded: hold could not be confirmed", extra=entry)


class Checkout:
    """Per-process checkout service (holds the provider and small caches)."""

    def __init__(self, *, redis: Redis, scripts: Scripts, snapshots: SnapshotManager, provider: PaymentProvider,
                 signer: TokenSigner, sealer: Sealer, prefix: str, confirmations: Confirmations | None = None
                 ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.snapshots = snapshots
        self.provider = provider
        self.signer = signer
        self.sealer = sealer
        self.prefix = prefix
        self.confirmations = confirmations
        self.infos: dict[int, EventInfo] = {}

    async def checkout_request(self, *, hold_id: str, buyer: str, key: str | None, body: Any) -> dict[str, Any]:
        """A buyer's checkout request as sent: validates the Idempotency-Key and the body first."""
        if not key:
            raise DomainError("validation_error", "Send an Idempotency-Key header (any unique string per checkout "
                              "attempt, 8-200 characters); repeating it returns the same order.", status=422)
        if not isinstance(body, dict) or set(body) - {"email", "payment_method"}:
            raise DomainError("validation_error", "The body may contain `email` and `payment_method` only.",
                              status=422)
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email or len(email) > 254):
            raise DomainError("validation_error", "`email` must be an e-mail address.", details={"email": email},
                              status=422)
        return await self.checkout(event_id=event_of_hold(hold_id), hold_id=hold_id, buyer=buyer, key=key, body=body)

    async def checkout(self, *, event_id: int, hold_id: str, buyer: str, key: str, body: dict[str, Any]
                       ) -> dict[str, Any]:
        if not 8 <= len(key) <= 200 or not key.isprintable():
            raise DomainError("validation_error", "The Idempotency-Key header must be 8 to 200 printable characters.",
                              status=422)
        records = checkout_records(self.prefix, event_id)
        field = f"{buyer}|{key}"
        fp = fingerprint(hold_id, body)
        order_id = order_id_for(event_id, hold_id, buyer, key)
        lock = attempt_lock(self.redis, self.prefix, event_id, field)
        deadline = time.monotonic() + WAIT_FOR_OTHER_S
        while True:
            raw = await self.redis.hget(records, field)
            if raw is not None and (answer := _settled(raw, fp, key)) is not None:
                return answer
            if await lock.acquire():
                break
            if time.monotonic() > deadline:  # the first attempt is still running
                raise DomainError("busy", "This checkout is still being processed; retry with the same key.",
                                  headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)
        try:
            if raw is None and not await self.redis.hsetnx(records, field, orjson.dumps(
                    {"fp": fp, "state": "started", "order_id": order_id})):
                # Another attempt wrote its record (and let go of the lock) since we looked: follow it.
                raw = await self.redis.hget(records, field)
                if (answer := _settled(raw, fp, key)) is not None:
                    return answer
            started = time.monotonic()
            try:
                result = await self._run(event_id=event_id, hold_id=hold_id, buyer=buyer, key=key, body=body,
                                         order_id=order_id, resumed=raw is not None)
            except DomainError as err:
                if err.code in FINAL_CODES:
                    await self.redis.hset(records, field, orjson.dumps({
                        "fp": fp, "state": "failed", "order_id": order_id,
                        "error": {"code": err.code, "message": err.message, "details": err.details}}))
                raise
            await self.redis.hset(records, field, orjson.dumps({"fp": fp, "state": "done", "order_id": order_id,
                                                                "result": result}))
            try:  # the waiting room slows admission when checkouts get slow (backpressure)
                await report_checkout_latency(redis=self.redis, prefix=self.prefix, event_id=event_id,
                                              ms=(time.monotonic() - started) * 1000)
            except RedisError:
                pass
            return result
        finally:
            await let_go(lock)

    async def _run(self, *, event_id: int, hold_id: str, buyer: str, key: str, body: dict[str, Any],
                   order_id: str, resumed: bool) -> dict[str, Any]:
        view = await self.snapshots.get(event_id)
        layout = view.layout
        info = await event_info(self.redis, self.prefix, event_id, self.infos, sealer=self.sealer)
        ctx = {"scripts": self.scripts, "prefix": self.prefix, "event_id": event_id}
        # A resumed attempt (a record exists) may have confirmed already: then only the answer is missing.
        # A first attempt cannot have, and skips the lookup.
        done = await self.redis.hget(event_key(self.prefix, event_id, "orders"), order_id) if resumed else None
        if done is not None:
            return self._answer(event_id, order_id, orjson.loads(done), layout, info, body)
        hold = await inventory.begin_checkout(**ctx, hold_id=hold_id, buyer=buyer, checkout_key=key)
        amount = order_total(layout, hold.get("seats") or [], hold.get("ga") or {})
        method = str(body.get("payment_method") or "card")
        try:
            auth = await self.provider.authorize(idempotency_key=f"{order_id}:authorize", amount_minor=amount,
                                                 currency=layout.currency, reference=f"{order_id}:{method}")
            payment = await self.provider.capture(idempotency_key=f"{order_id}:capture", payment_id=auth.payment_id,
                                                  amount_minor=amount)
        except PaymentDeclined as exc:
            await self._abort(ctx, hold_id, buyer, key)
            raise exc.to_domain() from None
        except ProviderUnavailable as exc:
            await self._abort(ctx, hold_id, buyer, key)
            raise exc.to_domain() from None
        # Money is taken: say so in the record, so that a checkout which dies before `confirm` is
        # either finished by a retry with the same key or refunded by `recover` — never forgotten.
        await self.redis.hset(checkout_records(self.prefix, event_id), f"{buyer}|{key}", orjson.dumps({
            "fp": fingerprint(hold_id, body), "state": "paid", "order_id": order_id, "hold_id": hold_id,
            "payment_id": payment.payment_id, "amount_minor": amount, "currency": layout.currency,
            "since": time.time()}))
        order = {"payment_id": payment.payment_id, "provider": self.provider.name,
                 "amount_minor": amount, "currency": layout.currency, "email": body.get("email"),
                 "idempotency_key": key, "organisation_id": info.organisation_id}
        try:
            confirmed = await self._confirm(ctx, hold_id, buyer, order_id, order)
        except DomainError as err:
            if err.code not in FINAL_CODES:
                raise
            await refund_orphan(redis=self.redis, provider=self.provider, prefix=self.prefix, event_id=event_id,
                                order_id=order_id, hold_id=hold_id, payment_id=payment.payment_id, amount=amount,
                                currency=layout.currency, reason=err.code)
            raise DomainError("hold_expired" if err.code in ("hold_expired", "hold_not_found") else err.code,
                              "Your hold ended before the payment completed; the payment was refunded.",
                              details={"hold_id": hold_id, "refunded": True, "reason": err.code}) from None
        result = self._answer(event_id, order_id, confirmed, layout, info, body)
        if self.confirmations is not None:
            try:
                await self.confirmations.order_paid(event_id=event_id, info=info, result=result,
                                                    email=body.get("email"))
            except Exception as exc:  # a notification never fails a sale
                log.warning("notification not queued", extra={"order_id": order_id, "error": repr(exc)})
        return result

    async def _confirm(self, ctx: dict[str, Any], hold_id: str, buyer: str, order_id: str,
                       order: dict[str, Any]) -> dict[str, Any]:
        delay = 0.05
        for attempt in range(5):
            try:
                confirmed = await inventory.confirm(**ctx, hold_id=hold_id, buyer=buyer, order_id=order_id, order=order)
                await self.redis.sadd(ledger_dirty_set(self.prefix), ctx["event_id"])  # after the XADD: ledger worker
                return confirmed
            except RedisError:
                if attempt == 4:
                    # Paid but not yet confirmed: a retry with the same key resumes here.
                    raise DomainError("unavailable", "The sale could not be recorded yet; retry with the same "
                                      "Idempotency-Key.", headers={"Retry-After": "2"}) from None
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _abort(self, ctx: dict[str, Any], hold_id: str, buyer: str, key: str) -> None:
        try:
            await inventory.abort_checkout(**ctx, hold_id=hold_id, buyer=buyer, checkout_key=key)
        except (DomainError, RedisError):
            pass

    def _answer(self, event_id: int, order_id: str, confirmed: dict[str, Any], layout: Any, info: Any,
                body: dict[str, Any]) -> dict[str, Any]:
        rows = ticket_rows(event_id=event_id, order_id=order_id, confirmed=confirmed, private_key=info.private_key,
                           layout=layout)
        seats = confirmed.get("seats") or []
        ga = confirmed.get("ga") or {}
        return {"order_id": order_id, "event_id": event_id, "status": "paid",
                "order_token": self.signer.sign("o", {"sub": order_id, "ev": event_id}),
                "total_minor": order_total(layout, seats, ga), "currency": layout.currency,
                "tickets": [public_ticket(r) for r in rows]}


class CheckoutRecovery:
    """Finishes what crashed checkouts left behind (run by the expiry worker): a payment taken for a
    hold that can no longer be confirmed is refunded, once, and the attempt's record says so."""

    def __init__(self, *, redis: Redis, provider: PaymentProvider, prefix: str) -> None:
        self.redis = redis
        self.provider = provider
        self.prefix = prefix

    async def recover(self, event_id: int, *, min_age_s: float = 60.0) -> int:
        """Refund payments whose checkout died after the payment and before `confirm`, once the hold
        is gone (it can then never be confirmed). Returns how many were refunded."""
        records = checkout_records(self.prefix, event_id)
        refunded = 0
        async for field, raw in self.redis.hscan_iter(records, count=500):
            rec = orjson.loads(raw)
            if rec.get("state") != "paid" or time.time() - rec.get("since", 0) < min_age_s:
                continue
            name = field.decode() if isinstance(field, bytes) else field
            lock = attempt_lock(self.redis, self.prefix, event_id, name)
            if not await lock.acquire():
                continue  # a retry with the same key is running: it will finish the job
            try:
                if await self.redis.hget(event_key(self.prefix, event_id, "orders"), rec["order_id"]):
                    continue  # confirmed after all: a retry with the key answers the order
                if await self.redis.hexists(event_key(self.prefix, event_id, "hdata"), rec["hold_id"]):
                    continue  # the hold still lives: the buyer may still retry and get the tickets
                await refund_orphan(redis=self.redis, provider=self.provider, prefix=self.prefix,
                                    event_id=event_id, order_id=rec["order_id"], hold_id=rec["hold_id"],
                                    payment_id=rec["payment_id"], amount=rec["amount_minor"],
                                    currency=rec["currency"], reason="checkout_interrupted")
                rec.update(state="failed", error={
                    "code": "hold_expired", "message": "Your hold ended before the payment completed; the payment "
                    "was refunded.", "details": {"hold_id": rec["hold_id"], "refunded": True,
                                                  "reason": "checkout_interrupted"}})
                await self.redis.hset(records, field, orjson.dumps(rec))
                refunded += 1
            finally:
                await let_go(lock)
        return refunded
