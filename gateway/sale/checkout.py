"""Checkout: a hold becomes a paid order with tickets, exactly once per Idempotency-Key.

Steps: begin_checkout (hold -> paying, expiry extended) -> authorize -> capture ->
confirm (Lua: held -> sold + ledger entry) -> tickets. The order id is derived from
(event, hold, buyer, key), and every provider call carries an idempotency key derived
from the order id, so a retry, or a second process taking over a crashed attempt,
repeats the same calls and gets the same answers. A payment taken for a hold that can
no longer be confirmed is refunded at once and the refund is recorded in the ledger. With
two-step payments, an authorization whose capture is refused for good is voided at once, and
one whose checkout died before its capture is voided by recovery once the hold is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
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
from gateway.providers.payments import PaymentDeclined, PaymentProvider, PaymentRejected, ProviderUnavailable
from gateway.sale.layout import EventLayout
from gateway.sale.snapshots import EventView, SnapshotManager
from gateway.store.scripts import Scripts
from gateway.sale import inventory
from gateway.sale.holds import event_of_hold
from gateway.orders.tickets import event_info, order_id_for, order_page_link, order_total, public_ticket, ticket_rows
from gateway.store.keys import checkout_lock, checkout_records, event_key, event_keys, ledger_dirty_set, qkey

log = logging.getLogger("flashgate.checkout")
PAYMENT_METHOD = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# The attempt lock only spares a concurrent retry the same work (every provider call carries a key derived
# from the order id, and confirm is idempotent), so it lasts about one attempt's budget: authorize and capture
# (PAYMENTS_TIMEOUT_S each) and the confirm retries. A lock left by an attempt interrupted by a Redis stall
# then holds a retry back for seconds, not half a minute.
LOCK_MS = 8_000
LATENCY_ALPHA = 0.2  # weight of one checkout in the latency EWMA the admission leader reads
WAKE_EVERY_S = 0.1  # how often a busy sale marks its event for the ledger worker
WAIT_FOR_OTHER_S = 3.0  # a retry waits this long for a running attempt, then answers 503 busy (never hangs)
FINAL_CODES = {"payment_declined", "hold_expired", "hold_not_found", "forbidden", "invalid_state"}
FREE_PROVIDER = "free"  # the payment record of an order whose total is 0: no provider is called
# A `started` record is judged by recovery only once its attempt is surely over: older than the attempt's
# lock (its whole budget) and this margin, whatever `min_age_s` a caller passes.
STALE_MARGIN_S = 2.0
STARTED_STALE_S = LOCK_MS / 1000 + STALE_MARGIN_S


def free_payment_id(order_id: str) -> str:
    """The payment reference of a free order (unique per order, never sent to a provider)."""
    return f"free-{order_id}"


def fingerprint(hold_id: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps({"hold": hold_id, "body": body}, option=orjson.OPT_SORT_KEYS)).hexdigest()


def checkout_keys(prefix: str, event_id: int, field: str) -> list[str]:
    """KEYS of checkout_begin / checkout_abort / checkout_confirm (all under the event's hash tag)."""
    return [*event_keys(prefix, event_id), checkout_records(prefix, event_id), checkout_lock(prefix, event_id, field),
            qkey(prefix, event_id, "state")]


def stored_error(error: dict[str, Any]) -> DomainError:
    """The refusal a key's attempt ended with, as it was first answered."""
    code = error.get("code", "invalid_state")
    message = error.get("message") or inventory.MESSAGES.get(code, code.replace("_", " ").capitalize() + ".")
    return DomainError(code, message, details=error.get("details") or {})


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
    if payment_id == free_payment_id(order_id):
        return  # a free order took no money: nothing to give back, nothing to record
    refund = await provider.refund(idempotency_key=f"{order_id}:refund", payment_id=payment_id,
                                   amount_minor=amount)
    entry = {"order_id": order_id, "hold_id": hold_id, "payment_id": payment_id, "refund_id": refund.refund_id,
             "amount_minor": amount, "currency": currency, "reason": reason, "provider": provider.name,
             "at_ms": int(time.time() * 1000)}
    await redis.xadd(event_key(prefix, event_id, "ledger"), {"k": "orphan_refund", "d": orjson.dumps(entry),
                                                             "o": b"{}"})
    await redis.sadd(ledger_dirty_set(prefix), event_id)  # after the XADD: the ledger worker polls it
    log.info("payment refunded: hold could not be confirmed", extra=entry)


async def void_authorization(provider: PaymentProvider, *, order_id: str, payment_id: str) -> bool:
    """Best effort: cancel the order's authorization that will never be captured, so the buyer's funds
    are released now rather than when the authorization lapses. The key is derived from the order id,
    so a repeat never acts twice. Returns whether it is voided; a failure is logged, never raised."""
    try:
        await provider.void(idempotency_key=f"{order_id}:void", payment_id=payment_id)
        return True
    except Exception as exc:  # the buyer's answer does not depend on it; the authorization lapses instead
        log.warning("authorization not voided; it lapses at the provider",
                    extra={"order_id": order_id, "payment_id": payment_id, "error": repr(exc)})
        return False


class Checkout:
    """Per-process checkout service (holds the provider and small caches)."""

    def __init__(self, *, redis: Redis, scripts: Scripts, snapshots: SnapshotManager, provider: PaymentProvider,
                 signer: TokenSigner, sealer: Sealer, prefix: str, confirmations: Confirmations | None = None,
                 capture_on_authorize: bool = True) -> None:
        self.redis = redis
        self.capture_on_authorize = capture_on_authorize
        self.scripts = scripts
        self.snapshots = snapshots
        self.provider = provider
        self.signer = signer
        self.sealer = sealer
        self.prefix = prefix
        self.confirmations = confirmations
        self.infos: dict[int, EventInfo] = {}
        self._woken: dict[int, float] = {}

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
        method = body.get("payment_method")
        if method is not None and (not isinstance(method, str) or not PAYMENT_METHOD.fullmatch(method)):
            # It goes to the provider (in the payment's reference): never anything but a short name.
            raise DomainError("validation_error", "`payment_method` must be a short name such as \"card\" "
                              "(1-32 lower-case letters, digits, '_' or '-', starting with a letter).", status=422)
        return await self.checkout(event_id=event_of_hold(hold_id), hold_id=hold_id, buyer=buyer, key=key, body=body)

    async def checkout(self, *, event_id: int, hold_id: str, buyer: str, key: str, body: dict[str, Any]
                       ) -> dict[str, Any]:
        """Pay for a hold, once per Idempotency-Key. Redis round trips of a purchase: one script before
        the payment (record + lock + begin_checkout), one after (record + confirm + latency + unlock),
        one to wake the ledger worker (see docs/checkout.md)."""
        if not 8 <= len(key) <= 200 or not key.isprintable():
            raise DomainError("validation_error", "The Idempotency-Key header must be 8 to 200 printable characters.",
                              status=422)
        started = time.monotonic()
        field = f"{buyer}|{key}"
        fp = fingerprint(hold_id, body)
        order_id = order_id_for(event_id, hold_id, buyer, key)
        keys = checkout_keys(self.prefix, event_id, field)
        token = os.urandom(8).hex()
        view = await self.snapshots.get(event_id)
        info = await event_info(self.redis, self.prefix, event_id, self.infos, sealer=self.sealer)
        deadline = started + WAIT_FOR_OTHER_S
        while True:
            reply = await self.scripts.call("checkout_begin", keys, [hold_id, buyer, key, field, fp, order_id, token,
                                                                     LOCK_MS])
            if reply.status != "busy":
                break
            if time.monotonic() > deadline:  # the first attempt is still running
                raise DomainError("busy", "This checkout is still being processed; retry with the same key.",
                                  headers={"Retry-After": "2"})
            await asyncio.sleep(0.05)
        if reply.status == "idempotency_conflict":
            raise DomainError("idempotency_conflict", "This Idempotency-Key was used with another request.",
                              details={"idempotency_key": key}, status=422)
        if reply.status == "settled":
            record = reply.data["record"]
            if record["state"] == "failed":
                raise stored_error(record["error"])
            return self._answer(event_id, record["order_id"], orjson.loads(reply.data["order"]), view.layout, info)
        hold = inventory.raise_for(reply)
        try:
            return await self._pay(event_id=event_id, hold=hold, buyer=buyer, key=key, body=body, order_id=order_id,
                                   field=field, fp=fp, keys=keys, token=token, view=view, info=info,
                                   started=started)
        except DomainError:
            raise  # every path that answers has let go of the lock already
        except BaseException:
            # Anything unexpected (Redis gone, cancelled): let go of the attempt's lock if we still hold it,
            # so a retry with the same key does not wait for it to expire. The hold stays paying with this
            # key, and the retry resumes it.
            await self._let_go(keys, hold_id, buyer, field, token)
            raise

    async def _pay(self, *, event_id: int, hold: dict[str, Any], buyer: str, key: str, body: dict[str, Any],
                   order_id: str, field: str, fp: str, keys: list[str], token: str, view: EventView,
                   info: EventInfo, started: float) -> dict[str, Any]:
        hold_id = hold["hold_id"]
        layout = view.layout
        amount = order_total(layout, hold.get("seats") or [], hold.get("ga") or {})
        method = str(body.get("payment_method") or "card")
        provider_name = self.provider.name
        authorized: str | None = None  # an authorization not captured yet (two steps)
        try:
            if amount == 0:
                # Free tickets need no payment: no provider call (providers refuse an amount of 0), and the
                # order records a capture of 0 by the `free` provider, so every order has its payment.
                payment_id, provider_name = free_payment_id(order_id), FREE_PROVIDER
            else:
                auth = await self.provider.authorize(idempotency_key=f"{order_id}:authorize", amount_minor=amount,
                                                     currency=layout.currency, reference=f"{order_id}:{method}",
                                                     capture=self.capture_on_authorize)
                payment_id = auth.payment_id
                if auth.status != "captured":  # two steps (configured, or a provider that only authorized)
                    authorized = auth.payment_id
                    payment_id = (await self.provider.capture(idempotency_key=f"{order_id}:capture",
                                                              payment_id=auth.payment_id,
                                                              amount_minor=amount)).payment_id
        except (PaymentDeclined, PaymentRejected, ProviderUnavailable) as exc:
            err = exc.to_domain()
            # A declined card, or a request the provider refuses as such, is the key's answer; an outage is not.
            final = isinstance(exc, (PaymentDeclined, PaymentRejected))
            if final and authorized is not None:
                # The capture was refused for good: the authorization will never be captured; release it.
                # (After an outage the record stays `started`: a retry with the key captures it, or recovery
                # voids it once the hold is gone.)
                await void_authorization(self.provider, order_id=order_id, payment_id=authorized)
            await self.scripts.call("checkout_abort", keys, [
                hold_id, buyer, key, field, token,
                orjson.dumps({"code": err.code, "message": err.message, "details": err.details}) if final else ""])
            raise err from None
        # Money is taken: the confirm script records it on the key's record first, so a checkout that dies
        # before `confirm` is finished by a retry with the same key or refunded by recovery — never forgotten.
        paid = orjson.dumps({"fp": fp, "state": "paid", "order_id": order_id, "hold_id": hold_id,
                             "payment_id": payment_id, "amount_minor": amount, "currency": layout.currency,
                             "since": time.time()})
        order = orjson.dumps({"payment_id": payment_id, "provider": provider_name,
                              "amount_minor": amount, "currency": layout.currency, "email": body.get("email"),
                              "idempotency_key": key, "organisation_id": info.organisation_id})
        args = [hold_id, buyer, order_id, order, field, paid, token, round((time.monotonic() - started) * 1000, 1),
                LATENCY_ALPHA]
        try:
            confirmed = await self._confirm(("HSET", checkout_records(self.prefix, event_id), field, paid), keys, args)
        except DomainError as err:
            if err.code not in FINAL_CODES:  # not recorded yet: a retry with the same key resumes
                await self._let_go(keys, hold_id, buyer, field, token)
                raise
            await refund_orphan(redis=self.redis, provider=self.provider, prefix=self.prefix, event_id=event_id,
                                order_id=order_id, hold_id=hold_id, payment_id=payment_id, amount=amount,
                                currency=layout.currency, reason=err.code)
            refused = DomainError("hold_expired" if err.code in ("hold_expired", "hold_not_found") else err.code,
                                  "Your hold ended before the payment completed; the payment was refunded.",
                                  details={"hold_id": hold_id, "refunded": True, "reason": err.code})
            await self.scripts.call("checkout_abort", keys, [hold_id, buyer, key, field, token, orjson.dumps(
                {"code": refused.code, "message": refused.message, "details": refused.details})])
            raise refused from None
        result = self._answer(event_id, order_id, confirmed, layout, info)
        await asyncio.gather(self._wake_ledger(event_id), self._notify(event_id, info, result, body))
        return result

    async def _confirm(self, record_paid: tuple[Any, ...], keys: list[str], args: list[Any]) -> dict[str, Any]:
        delay = 0.05
        for attempt in range(5):
            try:
                return inventory.raise_for(await self.scripts.call_after(record_paid, "checkout_confirm", keys, args))
            except RedisError:
                if attempt == 4:
                    # Paid but not yet confirmed: a retry with the same key resumes here.
                    raise DomainError("unavailable", "The sale could not be recorded yet; retry with the same "
                                      "Idempotency-Key.", headers={"Retry-After": "2"}) from None
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _let_go(self, keys: list[str], hold_id: str, buyer: str, field: str, token: str) -> None:
        """Let go of the attempt's lock (only if still ours), leaving the hold and the record as they are."""
        try:
            await self.scripts.call("checkout_abort", keys, [hold_id, buyer, "", field, token, ""])
        except Exception:  # Redis away: the lock expires by itself
            pass

    async def _wake_ledger(self, event_id: int) -> None:
        """Mark the event for the ledger worker (after the XADD in checkout_confirm). Once per
        WAKE_EVERY_S per event and process is enough: the worker drains everything pending when it
        reads, and never prunes an event that is on sale (a sale in progress is always polled)."""
        now = time.monotonic()
        if now - self._woken.get(event_id, -WAKE_EVERY_S) < WAKE_EVERY_S:
            return
        self._woken[event_id] = now
        try:
            await self.redis.sadd(ledger_dirty_set(self.prefix), event_id)
        except RedisError:
            self._woken.pop(event_id, None)

    async def _notify(self, event_id: int, info: EventInfo, result: dict[str, Any], body: dict[str, Any]) -> None:
        if self.confirmations is None:
            return
        try:
            await self.confirmations.order_paid(event_id=event_id, info=info, result=result, email=body.get("email"))
        except Exception as exc:  # a notification never fails a sale
            log.warning("notification not queued", extra={"order_id": result["order_id"], "error": repr(exc)})

    def _answer(self, event_id: int, order_id: str, confirmed: dict[str, Any], layout: EventLayout,
                info: EventInfo) -> dict[str, Any]:
        rows = ticket_rows(event_id=event_id, order_id=order_id, confirmed=confirmed, private_key=info.private_key,
                           layout=layout)
        seats = confirmed.get("seats") or []
        ga = confirmed.get("ga") or {}
        return {"order_id": order_id, "event_id": event_id, "status": "paid",
                "order_token": self.signer.sign("o", {"sub": order_id, "ev": event_id}),
                "total_minor": order_total(layout, seats, ga), "currency": layout.currency,
                "tickets": [public_ticket(r) for r in rows], **order_page_link(self.signer, order_id, event_id)}


class CheckoutRecovery:
    """Finishes what crashed checkouts left behind (run by the expiry worker): a payment taken for a
    hold that can no longer be confirmed is refunded, once, and the attempt's record says so. An attempt
    that died before its paid record (`started`) is looked up at the provider (`find`), which alone knows
    whether the money was taken."""

    def __init__(self, *, redis: Redis, provider: PaymentProvider, prefix: str) -> None:
        self.redis = redis
        self.provider = provider
        self.prefix = prefix

    async def recover(self, event_id: int, *, min_age_s: float = 60.0) -> int:
        """Refund payments whose checkout died after the payment and before `confirm`, once the hold
        is gone (it can then never be confirmed); settle `started` records of attempts that died during
        the payment (see `_settle_started`). Returns how many payments were refunded."""
        records = checkout_records(self.prefix, event_id)
        refunded = 0
        async for field, raw in self.redis.hscan_iter(records, count=500):
            rec = orjson.loads(raw)
            state, age = rec.get("state"), time.time() - rec.get("since", 0)
            if not (state == "paid" and age >= min_age_s
                    or state == "started" and age >= max(min_age_s, STARTED_STALE_S)):
                continue
            name = field.decode() if isinstance(field, bytes) else field
            lock = attempt_lock(self.redis, self.prefix, event_id, name)
            if not await lock.acquire():
                continue  # a retry with the same key is running: it will finish the job
            try:
                if await self.redis.hget(event_key(self.prefix, event_id, "orders"), rec["order_id"]):
                    continue  # confirmed after all: a retry with the key answers the order
                if state == "started":
                    refunded += await self._settle_started(event_id, records, field, rec)
                    continue
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

    async def _settle_started(self, event_id: int, records: str, field: bytes | str, rec: dict[str, Any]) -> int:
        """A `started` record whose attempt is over (the caller holds its lock): once its hold can no longer
        be paid with this key (gone, or paying with another key), ask the provider what the attempt did.
        Captured: refund it (`refund_orphan`, with its ledger entry). Authorized only: nothing is taken; the
        authorization is voided (never captured to be refunded, which would charge the buyer for nothing);
        if the provider is unavailable the record stays and the next pass asks again; a void the provider
        refuses leaves the authorization to lapse. Nothing there: nothing was taken. The key then answers
        its refusal. Returns 1 if refunded."""
        hold_id, order_id = rec.get("hold_id"), rec["order_id"]
        if not hold_id:
            return 0  # written before records named their hold: left for a retry with the key
        raw_hold = await self.redis.hget(event_key(self.prefix, event_id, "hdata"), hold_id)
        if raw_hold is not None:
            hold = orjson.loads(raw_hold)
            name = field.decode() if isinstance(field, bytes) else field
            if hold.get("st") != "paying" or name == f"{hold.get('b')}|{hold.get('k')}":
                return 0  # held again, or still paying with this key: a retry with the key may finish it
        voided = False
        try:
            found = await self.provider.find(idempotency_key=f"{order_id}:authorize")
            taken = found is not None and found.status in ("captured", "refunded")
            if taken:
                await refund_orphan(redis=self.redis, provider=self.provider, prefix=self.prefix, event_id=event_id,
                                    order_id=order_id, hold_id=hold_id, payment_id=found.payment_id,
                                    amount=found.amount_minor, currency=found.currency, reason="checkout_interrupted")
            elif found is not None and found.status == "authorized":
                try:
                    await self.provider.void(idempotency_key=f"{order_id}:void", payment_id=found.payment_id)
                    voided = True
                except PaymentRejected as exc:  # refused for good (e.g. already lapsed): nothing to release
                    log.warning("authorization not voided; it lapses at the provider",
                                extra={"order_id": order_id, "error": repr(exc)})
        except (ProviderUnavailable, PaymentRejected) as exc:
            log.warning("interrupted checkout not settled yet", extra={"order_id": order_id, "error": repr(exc)})
            return 0  # the next pass asks again
        code = "invalid_state" if raw_hold is not None else "hold_expired"
        message = ("Your checkout was interrupted and can no longer complete; "
                   + ("the payment was refunded." if taken else "no payment was taken."))
        details: dict[str, Any] = {"hold_id": hold_id, "refunded": taken, "reason": "checkout_interrupted"}
        if found is not None:
            rec["payment_id"] = details["payment_id"] = found.payment_id
        rec.update(state="failed", error={"code": code, "message": message, "details": details})
        await self.redis.hset(records, field, orjson.dumps(rec))
        log.info("interrupted checkout settled", extra={"order_id": order_id, "hold_id": hold_id,
                                                        "payment": "voided" if voided else
                                                        found.status if found else None})
        return 1 if taken else 0
