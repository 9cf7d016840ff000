"""Notification worker: delivers the `notify` stream by SMTP and webhook, with retries and dead letters.

Loop: move due retries back into the stream; now and then claim entries left
pending by a dead consumer (XAUTOCLAIM); read new entries (XREADGROUP); send each
one behind its provider's breaker and bulkhead. Outcome, each in one MULTI:
- sent: XACK + XDEL;
- failed, attempts left: ZADD to the retry set (due after backoff, or after the
  breaker's reset timeout if later) + XACK + XDEL;
- failed for the last time, or unsendable: XADD to the dead stream + XACK + XDEL.
A crash between reading and the outcome leaves the entry pending: another
consumer claims it after `claim_idle_s`, so a message may be sent twice, never lost.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import smtplib
import socket
import time
import uuid
from collections import OrderedDict
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import segno
from redis.exceptions import RedisError, ResponseError, WatchError

from gateway.core.runtime import Runtime
from gateway.providers.breaker import BreakerOpen, SharedBreaker
from gateway.providers.bulkhead import Bulkhead, BulkheadFull
from gateway.providers.egress import DestinationRefused, EgressPolicy, pinned_url
from gateway.core.sealing import SealError
from gateway.orders.notify import (SIGNATURE_HEADER, NotifySettings, dead_key, message_fields, open_secret, retry_key,
                                   sign_webhook, stream_key)
from gateway.store.cluster import ready_for_transaction

log = logging.getLogger(__name__)
GROUP = "notify"


class SendFailed(Exception):
    """A delivery attempt failed in a way worth retrying (the provider's health is in question)."""


class Rejected(Exception):
    """The destination answered but refused (4xx, recipient refused): retried, not a provider fault."""


class Unsendable(Exception):
    """The message itself is broken: straight to the dead letters."""


class Guard:
    """One provider's breaker and bulkhead."""

    def __init__(self, runtime: Runtime, settings: NotifySettings, name: str, concurrency: int,
                 timeout_s: float) -> None:
        # The trial lease outlasts one call (its timeout + 1 s): a slow trial is not joined by a second one.
        self.breaker = SharedBreaker(name, redis=runtime.redis, key=runtime.key("breaker", name),
                                     fail_max=settings.breaker_fail_max, reset_timeout_s=settings.breaker_reset_s,
                                     exclude=(Rejected, Unsendable), trial_lease_s=timeout_s + 1.0)
        self.bulkhead = Bulkhead(name, concurrency, settings.acquire_timeout_s)

    async def run(self, fn: Any) -> Any:
        await self.breaker.check()
        async with self.bulkhead:
            return await self.breaker.call(fn)


class SmtpSender:
    """stdlib smtplib in a worker thread: no extra dependency; the bulkhead bounds the threads."""

    def __init__(self, runtime: Runtime, settings: NotifySettings) -> None:
        self.settings = settings
        self.guard = Guard(runtime, settings, "smtp", settings.smtp_max_concurrency, settings.smtp_timeout_s)

    def build(self, payload: dict[str, Any], nid: str) -> EmailMessage:
        try:
            msg = EmailMessage()
            msg["From"] = self.settings.smtp_from
            msg["To"] = payload["to"]
            msg["Subject"] = payload["subject"]
            # Stable per notification, so a receiver can spot a duplicate after a retry.
            msg["Message-ID"] = make_msgid(idstring=nid, domain="flashgate")
            msg.set_content(payload["text"])
            if payload.get("html"):
                msg.add_alternative(payload["html"], subtype="html")
            for n, code in enumerate(payload.get("qr_codes") or [], 1):
                png = io.BytesIO()
                segno.make(code, error="m").save(png, kind="png", scale=4)
                msg.add_attachment(png.getvalue(), maintype="image", subtype="png", filename=f"ticket-{n}.png")
            return msg
        except (KeyError, TypeError, ValueError) as exc:
            raise Unsendable(f"bad e-mail payload: {exc}") from None

    def _send_sync(self, msg: EmailMessage) -> None:
        s = self.settings
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise Rejected(f"recipient refused: {exc.recipients}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendFailed(f"smtp: {type(exc).__name__}: {exc}") from None

    async def send(self, payload: dict[str, Any], nid: str) -> None:
        msg = self.build(payload, nid)
        await self.guard.run(lambda: asyncio.to_thread(self._send_sync, msg))

    async def aclose(self) -> None:
        await self.guard.breaker.aclose()


class WebhookSender:
    """Signed POSTs; one breaker and bulkhead per destination host, so one broken endpoint
    cannot stop the webhooks of every other organiser."""

    MAX_HOSTS = 1000

    def __init__(self, runtime: Runtime, settings: NotifySettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self._guards: OrderedDict[str, Guard] = OrderedDict()
        self.egress = EgressPolicy(settings.webhook_allow_networks)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.webhook_timeout_s, connect=2.0),
                                         follow_redirects=False,
                                         headers={"User-Agent": "Flashgate-Webhooks/1"})

    def guard(self, host: str) -> Guard:
        guard = self._guards.get(host)
        if guard is None:
            guard = Guard(self.runtime, self.settings, f"webhook:{host}", self.settings.webhook_max_concurrency,
                          self.settings.webhook_timeout_s)
            self._guards[host] = guard
            if len(self._guards) > self.MAX_HOSTS:
                self._guards.popitem(last=False)
        else:
            self._guards.move_to_end(host)
        return guard

    async def send(self, payload: dict[str, Any], nid: str) -> None:
        try:
            url = str(payload["url"])
            host = urlsplit(url).netloc
            body = orjson.dumps({"id": nid, "type": payload["event_type"], "created_at": int(time.time()),
                                 "data": payload.get("body")})
            secret = str(payload["secret"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unsendable(f"bad webhook payload: {exc}") from None
        if not host or not url.startswith(("http://", "https://")):
            raise Unsendable(f"bad webhook url {url!r}")
        # Checked on every delivery, on the address actually connected to (DNS may have changed since the
        # organiser registered the URL): a refused destination is never contacted.
        try:
            target = await self.egress.resolve(url)
        except DestinationRefused as exc:
            raise Unsendable(f"webhook: destination refused: {exc}") from None

        async def post() -> None:
            headers = {"Content-Type": "application/json", "X-Flashgate-Event": str(payload["event_type"]),
                       "X-Flashgate-Delivery": nid, SIGNATURE_HEADER: sign_webhook(secret, int(time.time()),
                                                                                          body)}
            try:
                resp = await self._client.post(pinned_url(target), content=body,
                                               headers={**headers, "Host": urlsplit(url).netloc.rsplit("@", 1)[-1]},
                                               extensions={"sni_hostname": target.hostname})
            except httpx.HTTPError:
                # One sentence for every transport failure (refused, timed out, reset, TLS): the organiser
                # sees this, and distinct errors would tell open ports from closed ones.
                raise SendFailed("webhook: the destination could not be reached") from None
            if resp.status_code >= 500 or resp.status_code == 429:
                raise SendFailed(f"webhook: http {resp.status_code}")
            if resp.status_code >= 300:
                raise Rejected(f"webhook: http {resp.status_code}")

        await self.guard(host).run(post)

    async def aclose(self) -> None:
        for guard in self._guards.values():
            await guard.breaker.aclose()
        await self._client.aclose()


class NotifyWorker:
    def __init__(self, runtime: Runtime, settings: NotifySettings | None = None, consumer: str | None = None) -> None:
        self.runtime = runtime
        self.redis = runtime.redis
        self.settings = settings or runtime.settings.notify
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stream, self.retry, self.dead = stream_key(runtime), retry_key(runtime), dead_key(runtime)
        self.senders: dict[str, Any] = {"email": SmtpSender(runtime, self.settings),
                                        "webhook": WebhookSender(runtime, self.settings)}
        self._claimed_at = 0.0
        self.sent = 0

    async def ensure_group(self) -> None:
        await self._adopt_untagged()
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _adopt_untagged(self) -> None:
        """Keys written before the notification keys shared the `{notify}` hash tag (`<prefix>:notify`,
        `:notify:retry`, `:notify:dead`, single Redis only) are renamed once, consumer group included."""
        prefix = self.runtime.prefix
        for old, new in ((f"{prefix}:notify", self.stream), (f"{prefix}:notify:retry", self.retry),
                         (f"{prefix}:notify:dead", self.dead)):
            try:
                if await self.redis.exists(old) and not await self.redis.renamenx(old, new):
                    log.warning("notification key %s kept: %s already exists", old, new)
            except ResponseError:  # CROSSSLOT: a Redis Cluster, where the untagged keys never existed
                return

    async def aclose(self) -> None:
        for sender in self.senders.values():
            await sender.aclose()

    def backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1)) * (1 + random.random() / 4)

    async def promote_due(self) -> int:
        """Move retries whose time has come back into the stream (atomic under WATCH)."""
        await ready_for_transaction(self.redis)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.retry)
                due = await pipe.zrangebyscore(self.retry, "-inf", time.time(), start=0, num=100)
                if not due:
                    return 0
                pipe.multi()
                pipe.zrem(self.retry, *due)
                for member in due:
                    m = orjson.loads(member)
                    pipe.xadd(self.stream, message_fields(kind=m["kind"], payload=m["payload"].encode(),
                                                          attempt=m["attempt"], nid=m["nid"], org=m["org"]))
                await pipe.execute()
                return len(due)
            except WatchError:
                return 0  # another worker moved them

    async def read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        if time.monotonic() - self._claimed_at >= self.settings.claim_every_s:
            self._claimed_at = time.monotonic()
            claimed = await self.redis.xautoclaim(self.stream, GROUP, self.consumer,
                                                  min_idle_time=int(self.settings.claim_idle_s * 1000),
                                                  start_id="0-0", count=self.settings.batch)
            entries += claimed[1]
        if not entries:
            answer = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"},
                                                 count=self.settings.batch, block=self.settings.block_ms)
            for _stream, items in answer or []:
                entries += items
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    async def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> str:
        """Send one entry and record the outcome; returns "sent", "retry" or "dead"."""
        kind = fields.get(b"kind", b"").decode()
        nid = fields.get(b"nid", b"").decode() or entry_id.decode()
        attempt = int(fields.get(b"attempt", b"0")) + 1
        delay = 0.0
        try:
            sender = self.senders.get(kind)
            if sender is None:
                raise Unsendable(f"unknown kind {kind!r}")
            try:
                payload = orjson.loads(fields[b"payload"])
            except (KeyError, orjson.JSONDecodeError):
                raise Unsendable("payload is not JSON") from None
            if kind == "webhook" and isinstance(payload, dict):
                try:  # the secret is queued sealed (notify.seal_secret): opened here, kept in memory only
                    payload["secret"] = open_secret(self.runtime.sealer, payload, fields.get(b"org", b"").decode())
                except (SealError, ValueError, KeyError):
                    raise Unsendable("webhook secret cannot be opened (sealed with another secret key?)") from None
            await sender.send(payload, nid)
        except Unsendable as exc:
            return await self._dead(entry_id, fields, attempt, str(exc))
        except BreakerOpen as exc:
            # Wait for the trial call rather than burn attempts against an open breaker.
            delay, error = exc.remaining_s, str(exc)
        except (SendFailed, Rejected, BulkheadFull) as exc:
            error = str(exc)
        else:
            await ready_for_transaction(self.redis)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, entry_id)
                pipe.xdel(self.stream, entry_id)
                await pipe.execute()
            self.sent += 1
            return "sent"
        if attempt >= self.settings.max_attempts:
            return await self._dead(entry_id, fields, attempt, error)
        due = time.time() + max(self.backoff(attempt), delay)
        member = orjson.dumps({"kind": kind, "payload": fields[b"payload"].decode(), "attempt": attempt,
                               "nid": nid, "org": fields.get(b"org", b"").decode(), "last_error": error})
        await ready_for_transaction(self.redis)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.retry, {member: due})
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()
        log.info("notification %s (%s) attempt %d failed: %s; next try in %.1f s", nid, kind, attempt, error,
                 due - time.time())
        return "retry"

    async def _dead(self, entry_id: bytes, fields: dict[bytes, bytes], attempt: int, error: str) -> str:
        dead = {k.decode(): v for k, v in fields.items()}
        dead.update({"attempt": attempt, "last_error": error[:500], "failed_at": repr(time.time())})
        await ready_for_transaction(self.redis)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead, dead)
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()
        log.warning("notification %s dead after %d attempts: %s", dead.get("nid"), attempt, error)
        return "dead"

    async def step(self) -> int:
        """One round: promote due retries, read a batch, send it. Returns the number of entries handled."""
        await self.promote_due()
        entries = await self.read()
        if entries:
            results = await asyncio.gather(*(self.handle(entry_id, fields) for entry_id, fields in entries),
                                           return_exceptions=True)
            for result in results:
                # Unrecorded outcome (Redis trouble): the entry stays pending and is claimed again later.
                if isinstance(result, BaseException):
                    log.warning("notify worker: could not record an outcome: %r", result)
        return len(entries)

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_group()
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await self.ensure_group()  # the stream was deleted under us
                except (RedisError, OSError) as exc:
                    log.warning("notify worker: Redis error %s; retrying", exc)
                    await _sleep_or_stop(stop, 1.0)
        finally:
            await self.aclose()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run(runtime: Runtime, stop: asyncio.Event, *, settings: NotifySettings | None = None) -> None:
    """Worker entry point (`flashgate worker notify`): returns soon after `stop` is set."""
    await NotifyWorker(runtime, settings).run(stop)
