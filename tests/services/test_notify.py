"""Notifications over real servers: aiosmtpd for mail, an HTTP server for webhooks, real Redis."""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller

from gateway.core.config import Settings
from tests.utils.webhooks import WebhookReceiver
from gateway.core.runtime import Runtime
from gateway.store.redis import RedisStore, redis_client
from gateway.orders import notify
from gateway.orders.ticketcodes import encode, generate_keypair
from gateway.stack.embedded import free_port
from gateway.workers.notify_worker import NotifyWorker, run

pytestmark = pytest.mark.anyio


# -- real servers ----------------------------------------------------------------------
class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.mailbox = Mailbox()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=port)

    def __enter__(self) -> "SmtpServer":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture
async def runtime(redis_server_url: str, redis_prefix: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings(environment="test", redis_url=redis_server_url, redis_prefix=f"{redis_prefix}:n{secrets.token_hex(3)}",
                        data_dir=tmp_path, secret_key="test-" + "x" * 40)
    rt = Runtime(settings, RedisStore.from_settings(settings))
    yield rt
    await rt.close()


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp(smtp_port: int) -> Iterator[SmtpServer]:
    with SmtpServer(smtp_port) as server:
        yield server


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def fast_settings(smtp_port: int, **overrides: Any) -> notify.NotifySettings:
    values: dict[str, Any] = dict(smtp_port=smtp_port, max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.2,
                                  breaker_fail_max=2, breaker_reset_s=0.3, block_ms=50, claim_every_s=0.1,
                                  smtp_timeout_s=2.0, webhook_timeout_s=2.0,
                                  webhook_allow_networks="127.0.0.0/8")  # the receivers listen on this machine
    values.update(overrides)
    return notify.NotifySettings(**values)


@asynccontextmanager
async def running_worker(runtime: Runtime, settings: notify.NotifySettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(runtime, stop, settings=settings))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def ticket_codes(n: int) -> list[str]:
    private, _ = generate_keypair()
    return [encode(private_key=private, key_id=1, event_id=7, serial=i) for i in range(1, n + 1)]


# -- tests -----------------------------------------------------------------------------
async def test_confirmation_email_is_delivered(runtime: Runtime, smtp: SmtpServer, smtp_port: int) -> None:
    codes = ticket_codes(2)
    payload = notify.order_confirmation_email(to="ada@example.org", order_id="ord-123", event_name="Night Show",
                                              tickets=[{"seat": "A-1-1", "code": codes[0]},
                                                       {"seat": "A-1-2", "code": codes[1]}])
    await notify.enqueue(runtime, kind="email", payload=payload, org_id=1)
    async with running_worker(runtime, fast_settings(smtp_port)):
        await eventually(lambda: len(smtp.mailbox.messages) == 1)
    rcpt, msg = smtp.mailbox.messages[0]
    assert rcpt == ["ada@example.org"]
    assert msg["Subject"] == "Your tickets for Night Show (order ord-123)"
    assert msg["To"] == "ada@example.org" and "tickets@flashgate.local" in msg["From"]
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert codes[0] in text and codes[1] in text and "A-1-2" in text
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert codes[0] in html
    pngs = [part for part in msg.iter_attachments() if part.get_content_type() == "image/png"]
    assert [p.get_filename() for p in pngs] == ["ticket-1.png", "ticket-2.png"]
    assert pngs[0].get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    assert await runtime.redis.xlen(notify.stream_key(runtime)) == 0  # delivered entries are removed


async def test_webhook_is_signed(runtime: Runtime, webhooks: WebhookReceiver, smtp_port: int) -> None:
    secret = "whsec_" + secrets.token_hex(16)
    await notify.enqueue(runtime, kind="webhook", payload={"url": webhooks.url, "secret": secret,
                                                           "event_type": "order.paid",
                                                           "body": {"order_id": "ord-9", "total_minor": 4200}})
    async with running_worker(runtime, fast_settings(smtp_port)):
        await eventually(lambda: len(webhooks.requests) == 1)
    headers, body = webhooks.requests[0]
    assert headers["content-type"] == "application/json" and headers["x-flashgate-event"] == "order.paid"
    signature = headers["x-flashgate-signature"]
    assert signature.startswith("t=") and ",v1=" in signature
    assert notify.verify_webhook(secret, signature, body)
    assert not notify.verify_webhook(secret, signature, body + b" ")
    assert not notify.verify_webhook("other", signature, body)
    assert not notify.verify_webhook(secret, signature, body, now=time.time() + 3600)
    assert not notify.verify_webhook(secret, "garbage", body)
    data = orjson.loads(body)
    assert data["type"] == "order.paid" and data["data"] == {"order_id": "ord-9", "total_minor": 4200}
    assert data["id"] == headers["x-flashgate-delivery"]


async def test_webhook_failures_are_retried(runtime: Runtime, webhooks: WebhookReceiver, smtp_port: int) -> None:
    webhooks.script = [503, 500]
    await notify.enqueue(runtime, kind="webhook", payload={"url": webhooks.url, "secret": "s",
                                                           "event_type": "order.paid", "body": {}})
    async with running_worker(runtime, fast_settings(smtp_port, max_attempts=5, breaker_fail_max=10)):
        await eventually(lambda: len(webhooks.requests) == 3)
        await asyncio.sleep(0.2)
    assert len(webhooks.requests) == 3
    deliveries = {headers["x-flashgate-delivery"] for headers, _ in webhooks.requests}
    assert len(deliveries) == 1  # the same notification id on every try
    assert await notify.list_dead(runtime) == []


async def test_smtp_down_dead_letters_then_replay_delivers(runtime: Runtime, smtp_port: int) -> None:
    settings = fast_settings(smtp_port)
    for n in range(2):
        await notify.enqueue(runtime, kind="email", org_id=5,
                             payload={"to": f"buyer{n}@example.org", "subject": f"Order {n}", "text": "tickets"})
    async with running_worker(runtime, settings):
        await eventually(lambda: _count_dead(runtime, 2))
    dead = await notify.list_dead(runtime)
    assert sorted(d["payload"]["to"] for d in dead) == ["buyer0@example.org", "buyer1@example.org"]
    assert all(d["attempts"] == 3 and d["org"] == "5" and d["kind"] == "email" for d in dead)
    assert all("smtp" in d["last_error"] or "open" in d["last_error"] for d in dead)
    assert await runtime.redis.xlen(notify.stream_key(runtime)) == 0
    assert await runtime.redis.zcard(notify.retry_key(runtime)) == 0
    assert await notify.list_dead(runtime, org_id=6) == []

    with SmtpServer(smtp_port) as server:
        assert await notify.replay_dead(runtime, org_id=6) == 0
        assert await notify.replay_dead(runtime) == 2
        assert await notify.list_dead(runtime) == []
        async with running_worker(runtime, settings):
            await eventually(lambda: len(server.mailbox.messages) == 2)
    assert sorted(r[0] for r, _ in server.mailbox.messages) == ["buyer0@example.org", "buyer1@example.org"]


async def _count_dead(runtime: Runtime, n: int) -> bool:
    return await runtime.redis.xlen(notify.dead_key(runtime)) == n


async def test_replay_selected_ids_and_secrets_are_masked(runtime: Runtime, smtp_port: int) -> None:
    port = free_port()  # nobody listens: connection refused
    for n in range(3):
        await notify.enqueue(runtime, kind="webhook", payload={"url": f"http://127.0.0.1:{port}/h{n}",
                                                               "secret": "topsecret", "event_type": "t", "body": {}})
    async with running_worker(runtime, fast_settings(smtp_port, max_attempts=1)):
        await eventually(lambda: _count_dead(runtime, 3))
    dead = await notify.list_dead(runtime, limit=2)
    assert len(dead) == 2 and all(d["payload"]["secret"] == "***" for d in dead)
    assert await notify.replay_dead(runtime, ids=[dead[0]["id"], "0-1"]) == 1
    assert len(await notify.list_dead(runtime)) == 2
    # The replayed message kept its secret, sealed (never in clear in Redis), and it still opens.
    entries = await runtime.redis.xrange(notify.stream_key(runtime))
    queued = orjson.loads(entries[0][1][b"payload"])
    assert "secret" not in queued and b"topsecret" not in entries[0][1][b"payload"]
    assert notify.open_secret(runtime.sealer, queued, entries[0][1][b"org"].decode()) == "topsecret"


async def test_a_webhook_secret_sealed_for_another_organisation_is_not_sent(runtime: Runtime, smtp_port: int,
                                                                          webhooks: WebhookReceiver) -> None:
    """A queued webhook whose sealed secret was made for another organisation (copied between entries)
    does not open: it goes to the dead letters unsent, never signed with a secret it does not own."""
    await notify.enqueue(runtime, kind="webhook", org_id=7, payload={"url": webhooks.url, "secret": "org-7-secret",
                                                                      "event_type": "t", "body": {}})
    entry_id, fields = (await runtime.redis.xrange(notify.stream_key(runtime)))[-1]
    await runtime.redis.xdel(notify.stream_key(runtime), entry_id)
    await runtime.redis.xadd(notify.stream_key(runtime), {**fields, b"org": b"8"})  # moved to organisation 8
    async with running_worker(runtime, fast_settings(smtp_port)):
        await eventually(lambda: _count_dead(runtime, 1))
    dead = await notify.list_dead(runtime)
    assert "cannot be opened" in dead[0]["last_error"] and dead[0]["payload"]["secret"] == "***"
    assert webhooks.requests == []


async def test_enqueue_never_waits_for_delivery(runtime: Runtime) -> None:
    started = time.monotonic()
    for n in range(200):
        await notify.enqueue(runtime, kind="email", payload={"to": "x@example.org", "subject": "s", "text": "t"})
    assert time.monotonic() - started < 1.0  # no SMTP server and no worker: producers only XADD
    assert await runtime.redis.xlen(notify.stream_key(runtime)) == 200
    with pytest.raises(ValueError):
        await notify.enqueue(runtime, kind="sms", payload={})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await notify.enqueue(runtime, kind="webhook", payload={"url": "ftp://x", "secret": "s", "event_type": "t"})
    with pytest.raises(ValueError):
        await notify.enqueue(runtime, kind="email", payload={"to": "x@example.org"})


async def test_entries_of_a_dead_consumer_are_claimed(runtime: Runtime, smtp: SmtpServer, smtp_port: int) -> None:
    settings = fast_settings(smtp_port, claim_idle_s=0.2)
    await notify.enqueue(runtime, kind="email", payload={"to": "late@example.org", "subject": "s", "text": "t"})
    crashed = NotifyWorker(runtime, settings, consumer="crashed")
    await crashed.ensure_group()
    assert len(await crashed.read()) == 1  # read, then "crashes" without acknowledging
    await crashed.aclose()
    async with running_worker(runtime, settings):
        await eventually(lambda: len(smtp.mailbox.messages) == 1)
    assert smtp.mailbox.messages[0][0] == ["late@example.org"]


async def test_broken_payload_goes_straight_to_dead_letters(runtime: Runtime, smtp_port: int) -> None:
    await runtime.redis.xadd(notify.stream_key(runtime), notify.message_fields(
        kind="email", payload={"subject": "no recipient"}, attempt=0, nid="n1"))
    async with running_worker(runtime, fast_settings(smtp_port, max_attempts=5)):
        await eventually(lambda: _count_dead(runtime, 1))
    dead = await notify.list_dead(runtime)
    assert dead[0]["attempts"] == 1 and "bad e-mail payload" in dead[0]["last_error"]


async def test_one_breaker_trial_at_a_time_outlasts_a_slow_call(runtime: Runtime, smtp_port: int,
                                                                   webhooks: WebhookReceiver) -> None:
    """A provider's half-open trial may take its whole timeout: the lease that keeps other processes
    from sending a second trial lasts that timeout + 1 s (a 5 s default lease was as long as the call),
    and shutting the worker down stops every breaker's background flush."""
    settings = fast_settings(smtp_port, smtp_timeout_s=7.0, webhook_timeout_s=9.0)
    worker = NotifyWorker(runtime, settings)
    smtp_breaker = worker.senders["email"].guard.breaker
    hook_breaker = worker.senders["webhook"].guard("hooks.example").breaker
    assert smtp_breaker.trial_lease_s == 8.0 and hook_breaker.trial_lease_s == 10.0
    await smtp_breaker.reset()  # a state change: its flush to Redis runs in the background
    await worker.aclose()
    assert smtp_breaker._flush_task is None and hook_breaker._flush_task is None
