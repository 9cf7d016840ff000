"""A gateway worker SIGKILLed while the provider captures a buyer's payment (docs/checkout.md, "Recovery").

A real gateway (granian, 2 workers), the real simulator with slow captures and a real ledger worker. The
worker serving the checkout dies while the one-step charge is at the provider, before the paid record: the key's record stays
`started` and Postgres never hears of the payment. A buyer who retries with the same key gets the order
and nothing is refunded; a buyer who never comes back gets the money back, once, when the hold is gone,
and the audit is clean either way. With two-step payments (authorize, then capture), a checkout that
dies before its capture took the money leaves an authorization only: recovery voids it once the hold is
gone, and nothing is charged or refunded."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.organisers.audit import audit_event
from gateway.sale import inventory
from gateway.sale.checkout import STARTED_STALE_S
from gateway.store.keys import checkout_records, event_key
from gateway.wiring import build_recovery
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import start_gateway, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BUYER_ADDRESS = "127.0.0.2"  # the buyer's checkout comes from its own address: its socket names the worker


@pytest.fixture
def gateway(settings: Settings, tmp_root: Path, payment_simulator: str) -> AsyncIterator[str]:
    """A gateway of this test's own (its workers get killed) and a ledger worker."""
    logs = tmp_root / "checkout-recovery"
    logs.mkdir(exist_ok=True)
    with start_gateway(settings, logs, workers=2) as url, start_worker(settings, "ledger", logs):
        yield url


@pytest.fixture
def two_step_gateway(settings: Settings, tmp_root: Path, payment_simulator: str,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """As `gateway`, with checkout paying in two steps (FLASHGATE_PAYMENTS_CAPTURE_ON_AUTHORIZE=false)."""
    monkeypatch.setenv("FLASHGATE_PAYMENTS_CAPTURE_ON_AUTHORIZE", "false")
    logs = tmp_root / "checkout-recovery-two-step"
    logs.mkdir(exist_ok=True)
    with start_gateway(settings, logs, workers=2) as url, start_worker(settings, "ledger", logs):
        yield url


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    await rt.close()


def serving_worker(port: int) -> int:
    """The pid of the gateway worker holding the buyer's connection (local port `port`, remote BUYER_ADDRESS)."""
    remote = "0200007F"  # 127.0.0.2 as /proc/net/tcp writes it
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, peer, state, inode = cols[1], cols[2], cols[3], cols[9]
        if int(local.split(":")[1], 16) == port and peer.split(":")[0] == remote and state == "01":
            inodes.add(f"socket:[{inode}]")
    assert inodes, "the buyer's connection is not open"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError("no process holds the buyer's connection")


async def checkout_killed_mid_capture(url: str, api_key: str, sim: httpx.Client, key: str, runtime: Runtime, *,
                                      hold_ttl_s: int = 600, window_ms: int | None = None, two_step: bool = False
                                      ) -> tuple[int, str, dict[str, str]]:
    """An event (holds of `hold_ttl_s`, kept `window_ms` once paying if given), a buyer's hold, and its
    checkout whose worker is killed while the charge (authorize with capture) is at the provider. Returns (event id, hold id, the
    buyer's headers). `two_step` (a gateway paying in two steps): the worker is killed while the capture
    is at the provider, and that capture then fails there (a 503), so the authorization is all that is left."""
    sim.put("/_config", json={"capture_latency_ms": 1500}).raise_for_status()
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client, \
            httpx.AsyncClient(base_url=url, timeout=10,
                              transport=httpx.AsyncHTTPTransport(local_address=BUYER_ADDRESS)) as buyer_client:
        spec = seat_spec(ga={"floor": 10}, ttl=hold_ttl_s)
        event = (await client.post("/v1/events", json=spec, headers=auth(api_key))).json()
        assert (await client.post(f"/v1/events/{event['id']}/open", headers=auth(api_key))).status_code == 200
        if window_ms is not None:  # how long a paying hold is kept (the event's meta, read by begin_checkout)
            await runtime.redis.hset(event_key(runtime.prefix, event["id"], "meta"), "checkout_ms", window_ms)
        token = (await client.post("/v1/buyer-token")).json()["buyer_token"]
        hold = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=auth(token))
        assert hold.status_code == 201, hold.text
        hold_id = hold.json()["hold_id"]
        headers = {**auth(token), "Idempotency-Key": key}
        paying = asyncio.create_task(buyer_client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers=headers))
        deadline = time.monotonic() + 30
        reached = "capture" if two_step else "authorize"
        while not sim.get("/_stats").json().get(reached):  # the charge has reached the provider
            assert time.monotonic() < deadline and not paying.done(), "the checkout never reached the capture"
            await asyncio.sleep(0.02)
        if two_step:  # the capture in flight fails at the provider (its latency is not over yet)
            sim.put("/_config", json={"failure_rate": 1.0}).raise_for_status()
        os.kill(serving_worker(port), signal.SIGKILL)
        with pytest.raises(httpx.TransportError):  # the buyer's checkout got no answer
            await paying
    return event["id"], hold_id, headers


async def key_record(runtime: Runtime, event_id: int, key: str) -> dict:
    records = await runtime.redis.hgetall(checkout_records(runtime.prefix, event_id))
    [raw] = [v for f, v in records.items() if f.decode().endswith("|" + key)]
    return orjson.loads(raw)


async def recover_until_settled(runtime: Runtime, event_id: int, key: str) -> list[int]:
    """Recovery passes (as the expiry worker runs them) until the key's record is settled; their results."""
    recovery, payments = build_recovery(runtime)
    passes = []
    try:
        deadline = time.monotonic() + STARTED_STALE_S + 30
        while True:
            passes.append(await recovery.recover(event_id, min_age_s=0))
            if (await key_record(runtime, event_id, key))["state"] != "started":
                passes.append(await recovery.recover(event_id, min_age_s=0))  # and once more: nothing left
                return passes
            assert time.monotonic() < deadline, "recovery never settled the interrupted checkout"
            await asyncio.sleep(0.5)
    finally:
        await payments.aclose()


async def audit_clean(runtime: Runtime, event_id: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        report = await audit_event(redis=runtime.redis, pool=await runtime.pg(), prefix=runtime.prefix,
                                   event_id=event_id, scripts=runtime.scripts)
        if report.ok:
            return
        assert time.monotonic() < deadline, [c for c in report.checks if not c.ok]
        await asyncio.sleep(0.5)


async def test_a_buyer_who_never_retries_gets_the_money_back_once(gateway, runtime, sim, settings, pg):
    _, api_key = await new_org(settings.database_url)
    event_id, hold_id, headers = await checkout_killed_mid_capture(gateway, api_key, sim, "k-never-back", runtime,
                                                                   hold_ttl_s=5, window_ms=5000)
    record = await key_record(runtime, event_id, "k-never-back")
    assert record["state"] == "started" and record["hold_id"] == hold_id, record

    # The buyer never comes back; the payment window runs out and the expiry sweep takes the hold.
    holds = event_key(runtime.prefix, event_id, "holds")
    expires_at = await runtime.redis.zscore(holds, hold_id)
    await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 0.2)
    await inventory.expire(scripts=runtime.scripts, prefix=runtime.prefix, event_id=event_id)
    assert not await runtime.redis.hexists(event_key(runtime.prefix, event_id, "hdata"), hold_id)
    passes = await recover_until_settled(runtime, event_id, "k-never-back")

    assert passes[-2:] == [1, 0], passes  # refunded by one pass, never again
    payment = sim.get("/v1/payments", params={"idempotency_key": f"{record['order_id']}:authorize"}).json()
    assert payment["status"] == "refunded" and payment["refunded_minor"] == payment["captured_minor"] > 0, payment
    stats = sim.get("/_stats").json()
    assert stats["captured"] == 1 and stats["refund"] == 1, stats
    settled = await key_record(runtime, event_id, "k-never-back")
    assert settled["state"] == "failed" and settled["error"]["details"]["refunded"] is True, settled
    assert settled["payment_id"] == payment["id"]

    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        late = await client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers=headers)
    assert late.status_code == 409 and late.json()["error"]["details"]["refunded"] is True, late.text
    assert sim.get("/_stats").json()["refund"] == 1, "a late retry takes and refunds nothing more"

    await audit_clean(runtime, event_id)
    rows = await pg.fetch("SELECT kind, provider_ref, amount_minor FROM payments WHERE order_id IS NULL "
                          "AND hold_id = $1 ORDER BY kind", hold_id)
    assert [(r["kind"], r["amount_minor"]) for r in rows] == [("capture", payment["captured_minor"]),
                                                              ("refund", payment["captured_minor"])]
    assert not await pg.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", event_id)


async def test_a_buyer_who_retries_gets_the_order_and_nothing_is_refunded(gateway, runtime, sim, settings, pg):
    _, api_key = await new_org(settings.database_url)
    event_id, hold_id, headers = await checkout_killed_mid_capture(gateway, api_key, sim, "k-comes-back", runtime)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        deadline = time.monotonic() + 60
        while True:  # as the buyer page does: the same key again after no answer or a 503
            try:
                resp = await client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers=headers)
                if resp.status_code != 503:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the retry never completed"
            await asyncio.sleep(0.5)
    assert resp.status_code == 201, resp.text
    order = resp.json()
    assert len(order["tickets"]) == 1

    record = await key_record(runtime, event_id, "k-comes-back")
    assert record["state"] == "done" and record["order_id"] == order["order_id"]
    await asyncio.sleep(max(0.0, record["since"] + STARTED_STALE_S - time.time()))  # old enough to be judged
    recovery, payments = build_recovery(runtime)
    try:
        assert await recovery.recover(event_id, min_age_s=0) == 0
    finally:
        await payments.aclose()
    stats = sim.get("/_stats").json()
    assert stats["captured"] == 1 and not stats.get("refund"), stats
    payment = sim.get("/v1/payments", params={"idempotency_key": f"{order['order_id']}:authorize"}).json()
    assert payment["status"] == "captured"

    await audit_clean(runtime, event_id)
    assert await pg.fetchval("SELECT status FROM orders WHERE id = $1::uuid", order["order_id"]) == "paid"
    assert not await pg.fetchval("SELECT count(*) FROM payments WHERE hold_id = $1 AND kind = 'refund'", hold_id)


async def test_two_step_an_authorization_left_by_a_dead_checkout_is_voided(two_step_gateway, runtime, sim, settings,
                                                                            pg):
    _, api_key = await new_org(settings.database_url)
    event_id, hold_id, headers = await checkout_killed_mid_capture(two_step_gateway, api_key, sim, "k-two-step",
                                                                   runtime, hold_ttl_s=5, window_ms=5000,
                                                                   two_step=True)
    deadline = time.monotonic() + 30
    while not sim.get("/_stats").json().get("failed"):  # the capture the dead worker sent has failed
        assert time.monotonic() < deadline, sim.get("/_stats").json()
        await asyncio.sleep(0.05)
    sim.put("/_config", json={"failure_rate": 0.0}).raise_for_status()
    record = await key_record(runtime, event_id, "k-two-step")
    assert record["state"] == "started" and record["hold_id"] == hold_id, record
    authorize_key = {"idempotency_key": f"{record['order_id']}:authorize"}
    assert sim.get("/v1/payments", params=authorize_key).json()["status"] == "authorized"

    # The buyer never comes back; the payment window runs out and the expiry sweep takes the hold.
    holds = event_key(runtime.prefix, event_id, "holds")
    expires_at = await runtime.redis.zscore(holds, hold_id)
    await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 0.2)
    await inventory.expire(scripts=runtime.scripts, prefix=runtime.prefix, event_id=event_id)
    assert not await runtime.redis.hexists(event_key(runtime.prefix, event_id, "hdata"), hold_id)
    passes = await recover_until_settled(runtime, event_id, "k-two-step")

    assert passes[-2:] == [0, 0], passes  # nothing refunded: nothing was taken
    payment = sim.get("/v1/payments", params=authorize_key).json()
    assert payment["status"] == "voided" and payment["captured_minor"] == 0, payment  # released, not left to lapse
    stats = sim.get("/_stats").json()
    assert stats["authorized"] == 1 and stats["void"] == 1 and not stats.get("refund"), stats
    settled = await key_record(runtime, event_id, "k-two-step")
    assert settled["state"] == "failed" and settled["error"]["details"]["refunded"] is False, settled
    assert settled["payment_id"] == payment["id"]

    async with httpx.AsyncClient(base_url=two_step_gateway, timeout=10) as client:
        late = await client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers=headers)
    assert late.status_code == 409 and late.json()["error"]["details"]["refunded"] is False, late.text
    later = sim.get("/_stats").json()
    assert later["void"] == 1 and later["capture"] == stats["capture"], "a late retry neither captures nor voids"

    await audit_clean(runtime, event_id)
    assert not await pg.fetchval("SELECT count(*) FROM payments WHERE hold_id = $1", hold_id)
    assert not await pg.fetchval("SELECT count(*) FROM orders WHERE event_id = $1", event_id)
