"""The payment provider failing (an error storm) or hanging (a timeout storm) in the middle of a sale
(docs/operations.md, "Runbook: processes, Postgres and the payment provider").

A real gateway (granian, 2 workers) and ledger worker in front of the payment simulator. During the
storm checkout answers `503 payments_unavailable` with Retry-After and keeps the buyer's hold, the
shared breaker opens (seen in the organiser's figures and in `/metrics`), and availability, holds,
queue joins and polls, and the organiser's figures and orders keep answering. When the storm ends the
breaker closes again, the buyers' retries with the same Idempotency-Key succeed, and the audit is
clean. How fast the other routes answer during a storm is measured by bench/bench_provider_storm.py
(docs/performance.md)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.chaos.stack_faults import wait_audit_clean
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import stack_env, start_gateway, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STORMS = {
    "error": {"duration_s": 600, "failure_rate": 1.0, "mode": "error"},
    "timeout": {"duration_s": 600, "failure_rate": 1.0, "mode": "timeout", "timeout_ms": 5000},
}


async def breaker_state(client: httpx.AsyncClient, key: str, event_id: int) -> str:
    stats = (await client.get(f"/v1/events/{event_id}/stats", headers=auth(key))).json()
    return stats["providers"]["payments"]["breaker"]["state"]


async def wait_breaker(client: httpx.AsyncClient, key: str, event_id: int, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := await breaker_state(client, key, event_id)) != state:
        assert time.monotonic() < deadline, f"breaker {now}, not {state}"
        await asyncio.sleep(0.2)


async def hold(client: httpx.AsyncClient, event_id: int) -> tuple[dict[str, str], str]:
    token = (await client.post("/v1/buyer-token")).json()["buyer_token"]
    resp = await client.post(f"/v1/events/{event_id}/holds", json={"ga": {"floor": 1}}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return auth(token), resp.json()["hold_id"]


async def checkout(client: httpx.AsyncClient, who: dict[str, str], hold_id: str, key: str) -> httpx.Response:
    return await client.post(f"/v1/holds/{hold_id}/checkout", json={}, headers={**who, "Idempotency-Key": key})


@pytest.mark.parametrize("mode", sorted(STORMS))
async def test_breaker_opens_in_a_provider_storm_and_other_routes_answer(mode, settings, database_url, sim, tmp_root):
    local = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}:storm-{mode}"})
    _, key = await new_org(database_url)
    with start_gateway(local, tmp_root) as url, start_worker(local, "ledger", tmp_root):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            event = (await client.post("/v1/events", json=seat_spec(ga={"floor": 200}), headers=auth(key))).json()
            queued = (await client.post("/v1/events", json=seat_spec(ga={"floor": 50}, queue=True),
                                        headers=auth(key))).json()
            for ev in (event, queued):
                assert (await client.post(f"/v1/events/{ev['id']}/open", headers=auth(key))).status_code == 200
            first = await hold(client, event["id"])
            assert (await checkout(client, *first, "storm-before-0")).status_code == 201

            sim.put("/_config", json={"storm": STORMS[mode]}).raise_for_status()
            buyers = [await hold(client, event["id"]) for _ in range(8)]
            answers = await asyncio.gather(*(checkout(client, who, hold_id, f"storm-buyer-{i}")
                                             for i, (who, hold_id) in enumerate(buyers)))
            for resp in answers:  # refused honestly, with a time to come back
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"]["code"] == "payments_unavailable", resp.text
                assert int(resp.headers["retry-after"]) >= 1
            await wait_breaker(client, key, event["id"], "open")
            for _ in range(4):  # still ready to sell, and every worker says the breaker is open
                async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:
                    ready = await fresh.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["payments"]["breaker"] == "open", ready.text
            metrics = (await client.get("/metrics")).text
            assert re.search(r'flashgate_breaker_state\{breaker="payments",state="open"\} 1\.0', metrics), metrics[-3000:]

            # While it is open: the buyers' holds are kept, and everything but payment answers.
            availability = await client.get(f"/v1/events/{event['id']}/availability")
            assert availability.status_code == 200
            stats = (await client.get(f"/v1/events/{event['id']}/stats", headers=auth(key))).json()
            assert stats["totals"]["held"] == 8 and stats["totals"]["sold"] == 1, stats["totals"]
            extra = await hold(client, event["id"])  # a new hold is granted
            token = (await client.post("/v1/buyer-token")).json()["buyer_token"]
            joined = await client.post(f"/v1/events/{queued['id']}/queue", headers=auth(token))
            assert joined.status_code in (200, 201), joined.text
            poll = await client.get(f"/v1/events/{queued['id']}/queue", headers=auth(joined.json()["queue_token"]))
            assert poll.status_code == 200 and ("position" in poll.json() or "admission_token" in poll.json())
            orders = await client.get(f"/v1/events/{event['id']}/orders", headers=auth(key))
            assert orders.status_code == 200 and isinstance(orders.json()["orders"], list)
            again = await checkout(client, *extra, "storm-extra-0")
            assert again.status_code == 503 and again.json()["error"]["code"] == "payments_unavailable"

            # The storm ends: the breaker lets a trial through, closes, and the same keys now buy.
            sim.put("/_config", json={"storm": None}).raise_for_status()
            results = []
            for i, (who, hold_id) in enumerate([*buyers, extra]):
                name = f"storm-buyer-{i}" if i < len(buyers) else "storm-extra-0"
                deadline = time.monotonic() + 60
                while (resp := await checkout(client, who, hold_id, name)).status_code == 503:
                    assert time.monotonic() < deadline, resp.text
                    await asyncio.sleep(min(float(resp.headers.get("retry-after", "1")), 2.0))
                results.append(resp)
            assert [r.status_code for r in results] == [201] * 9, [r.text for r in results]
            await wait_breaker(client, key, event["id"], "closed")
            totals = (await client.get(f"/v1/events/{event['id']}/stats", headers=auth(key))).json()["totals"]
            assert totals["sold"] == 10 and totals["held"] == 0, totals
            result = await wait_audit_clean(stack_env(local), event["id"])
            assert result.returncode == 0, result.stdout + result.stderr
