"""Webhooks reach public addresses only: at registration, and on the resolved address of every delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from gateway.orders import notify
from gateway.providers.egress import EgressPolicy, refusal
from gateway.stack.embedded import free_port
from gateway.workers.notify_worker import run as notify_run
from tests.organisers.conftest import app_client
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.servers import delete_prefix
from tests.utils.webhooks import WebhookReceiver

pytestmark = pytest.mark.anyio
SECRET = "whsec-0123456789abcdef"
LOOPBACK = "127.0.0.0/8"


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "non-public"), ("192.0.2.10", "private"), ("240.0.0.1", "private"),
    ("93.184.216.34", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
])
def test_only_public_addresses_pass(address, reason):
    assert refusal(ipaddress.ip_address(address)) == reason


async def test_the_allow_list_lets_chosen_networks_through():
    assert (await EgressPolicy(LOOPBACK).resolve("http://127.0.0.1:9/x")).address == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(Exception, match="link-local"):
        await EgressPolicy(LOOPBACK).resolve("http://169.254.169.254/latest/meta-data/")


def _spec(url: str) -> dict:
    return {**seat_spec(ga={"floor": 10}), "webhook": {"url": url, "secret": SECRET}}


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:6379/", "loopback"),                   # the stack's own Redis
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # the cloud metadata service
    ("http://[::1]:5432/", "loopback"),
    ("http://10.0.0.5/hook", "private"),
    ("http://localhost:8080/hook", "loopback"),               # a name: its resolved addresses are checked
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("https://flashgate-no-such-host.invalid/hook", "does not resolve"),
    ("http://user:pw@93.184.216.34/hook", "user name"),
])
async def test_registration_refuses_non_public_destinations(client, database_url, pg, url, says):
    _, key = await new_org(database_url)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json=_spec(url), headers=auth(key))
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and "webhook.url" in err["message"] and says in err["message"]
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_the_development_allow_list_accepts_a_local_receiver(settings, database_url):
    _, key = await new_org(database_url)
    allowed = settings.notify.model_copy(update={"webhook_allow_networks": LOOPBACK})
    async with app_client(settings, notify=allowed) as client:
        resp = await client.post("/v1/events", json=_spec("http://localhost:8080/hook"), headers=auth(key))
        assert resp.status_code == 201, resp.text


@pytest.fixture
async def own(settings, redis_server_url):
    """An app with a notification stream of its own: the worker under test must not first work through
    the mail every earlier test in the session queued."""
    prefix = f"{settings.redis_prefix}-wh{secrets.token_hex(3)}"
    async with app_client(settings, redis_prefix=prefix) as client:
        yield client
    delete_prefix(redis_server_url, prefix)


@asynccontextmanager
async def worker(runtime, allow: str):
    settings = notify.NotifySettings(smtp_port=free_port(), max_attempts=1, block_ms=50, claim_every_s=0.1,
                                     webhook_timeout_s=2.0, webhook_allow_networks=allow)
    stop = asyncio.Event()
    task = asyncio.create_task(notify_run(runtime, stop, settings=settings))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _dead_letters(client, key: str, n: int) -> list[dict]:
    for _ in range(200):
        resp = await client.get("/v1/notifications/dead", headers=auth(key))
        assert resp.status_code == 200, resp.text
        dead = resp.json()["dead"]
        if len(dead) >= n:
            return dead
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} dead letters, found {dead}")


async def _send(runtime, org_id: int, url: str) -> None:
    await notify.enqueue(runtime, kind="webhook", org_id=org_id,
                         payload={"url": url, "secret": SECRET, "event_type": "order.paid", "body": {"n": 1}})


async def test_delivery_checks_the_resolved_address_again(own, database_url):
    """The URL passed when it was registered (here: the allow-list then in force); at delivery the name
    resolves to loopback, which the delivering worker refuses without connecting."""
    org_id, key = await new_org(database_url)
    with WebhookReceiver() as hooks:
        url = hooks.url.replace("127.0.0.1", "localhost")
        async with worker(own.app.gateway.runtime, allow=""):
            await _send(own.app.gateway.runtime, org_id, url)
            dead = await _dead_letters(own, key, 1)
        assert hooks.requests == []
        assert "destination refused" in dead[0]["last_error"] and "loopback" in dead[0]["last_error"]
        # with the development allow-list the same URL is delivered, to the checked address, Host kept
        async with worker(own.app.gateway.runtime, allow=LOOPBACK):
            await _send(own.app.gateway.runtime, org_id, url)
            for _ in range(200):
                if hooks.requests:
                    break
                await asyncio.sleep(0.05)
        headers, body = hooks.requests[0]
        assert headers["host"] == urlsplit(url).netloc
        assert notify.verify_webhook(SECRET, headers["x-flashgate-signature"], body)


async def test_delivery_errors_do_not_tell_open_ports_from_closed_ones(own, database_url, settings):
    """An open port speaking another protocol (the stack's Redis) and a closed port read the same."""
    org_id, key = await new_org(database_url)
    redis = urlsplit(settings.redis_url)
    allowed = f"{ipaddress.ip_address(redis.hostname)}/32,127.0.0.0/8" if redis.hostname[0].isdigit() else LOOPBACK
    async with worker(own.app.gateway.runtime, allow=allowed):
        await _send(own.app.gateway.runtime, org_id, f"http://{redis.hostname}:{redis.port}/")
        await _send(own.app.gateway.runtime, org_id, f"http://127.0.0.1:{free_port()}/")
        dead = await _dead_letters(own, key, 2)
    errors = {d["last_error"] for d in dead}
    assert errors == {"webhook: the destination could not be reached"}, errors


@pytest.mark.parametrize("allow, refused", [("127.0.0.0/8", True), ("169.254.169.254/32", True), ("::1/128", True),
                                            ("0.0.0.0/0", True), ("10.0.0.0/8", False), ("", False)])
def test_production_refuses_an_allow_list_that_opens_loopback_or_link_local(allow, refused):
    from pydantic import ValidationError

    from gateway.core.config import NotifySettings, Settings

    def make() -> Settings:
        return Settings(environment="production", secret_key=secrets.token_urlsafe(32),
                        notify=NotifySettings(webhook_allow_networks=allow))

    if refused:
        with pytest.raises(ValidationError, match="WEBHOOK_ALLOW_NETWORKS"):
            make()
    else:
        assert make().notify.webhook_allow_networks == allow
    # development takes any list
    Settings(environment="development", secret_key="d" * 40, notify=NotifySettings(webhook_allow_networks=allow))
