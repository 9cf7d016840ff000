"""Redis killed mid-sale (SIGKILL, restarted from its append-only file) and Redis stalled
(SIGSTOP for 5 s, then SIGCONT), under a real gateway with 2 granian workers and the ledger,
expiry and admission workers, all on a private redis-server.

While Redis is away: availability is served from each worker's snapshot marked `"stale": true`
(for up to 10 s, then `503`), holds and checkouts answer `503` + `Retry-After` within a few
seconds (never hang), scans answer `"degraded": true`, `/readyz` is 503 and the scrape says
`flashgate_redis_up 0`. When Redis is back, nothing is restarted: buyers caught mid-sale finish
with their same Idempotency-Key, new buyers go through the waiting room and buy, the degraded scans
are replayed, the ledger drains, and the audit passes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import Settings
from tests.chaos.redis_faults import (Stack, admitted_buyer, audit_clean, buy, checkout, failed, fresh, hold, metric,
                                      queue_event, redis_stack, timed, until, worker_of)
from tests.utils.factories import auth

pytestmark = pytest.mark.slow

FAST_S = 3.0     # "answered at once, not hung": the Redis budget is 1 s
STALL_S = 5.0


class MidSaleBuyer(threading.Thread):
    """An admitted buyer who buys `PURCHASES` GA tickets one after the other (a hold of one, then its
    checkout), as the buyer page does: a `503` or `429` (or no answer) is retried after its Retry-After, the
    checkout with the same Idempotency-Key. (All the test's buyers share one address: the retries that
    follow Redis's return can meet the per-address limit.)"""

    PURCHASES = 6

    def __init__(self, url: str, event_id: int, me: dict[str, str], key: str, give_up_at: float) -> None:
        super().__init__(daemon=True)
        self.url, self.event_id, self.me, self.key, self.give_up_at = url, event_id, me, key, give_up_at
        self.retries = 0
        self.answers: list[httpx.Response | None] = []

    def _send(self, c: httpx.Client, call) -> httpx.Response | None:
        while time.monotonic() < self.give_up_at:
            try:
                resp = call(c)
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code not in (503, 429):  # both say when to come back
                return resp
            self.retries += 1
            time.sleep(min(float(resp.headers.get("retry-after", "1")) if resp is not None else 0.5, 1.0))
        return None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            for n in range(self.PURCHASES):
                h = self._send(c, lambda c: hold(c, self.event_id, self.me, {"ga": {"floor": 1}}))
                if h is None or h.status_code != 201:
                    self.answers.append(h)
                    return
                self.answers.append(self._send(c, lambda c: checkout(c, h.json()["hold_id"], self.me,
                                                                     f"{self.key}-{n}")))


def warm_both_workers(url: str, event: dict[str, Any], device_token: str, code: str) -> None:
    """Both workers load the event's snapshot and scan for it (a worker that never scanned for an
    event cannot scan it without Redis): scanned through fresh connections until both answered."""
    seen: set[str] = set()
    with fresh(url) as c:
        for _ in range(40):
            a = c.get(f"/v1/events/{event['id']}/availability")
            s = c.post("/v1/scan", json={"code": code}, headers=auth(device_token))
            assert a.status_code == 200 and s.status_code == 200, (a.text, s.text)
            seen.add(worker_of(s))
            if len(seen) == 2:
                return
    raise AssertionError("every request went to one worker; the test proves nothing")


def scan_stats(c: httpx.Client, event: dict[str, Any]) -> dict[str, Any]:
    resp = c.get(f"/v1/events/{event['id']}/scans", headers=auth(event["api_key"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_redis_away_mid_sale_then_back(fault: str, settings: Settings, database_url: str, tmp_path: Path,
                                       sim: httpx.Client) -> None:
    with redis_stack(settings, tmp_path) as stack, httpx.Client(base_url=stack.url, timeout=30) as c:
        run_scenario(fault, stack, c, database_url)


def run_scenario(fault: str, stack: Stack, c: httpx.Client, database_url: str) -> None:
    # Per-buyer limit 8: each buyer of the crowd buys 6, so the holds a stall makes for their retries
    # (answered 503) must be given back, or they would count against it.
    event = queue_event(c, database_url, sections=1, rows=2, seats=10, ga={"floor": 100}, limit=8)
    eid = event["id"]
    # Before: two orders (tickets to scan), a device, and both workers warmed.
    first = buy(c, eid, admitted_buyer(c, eid), {"seats": ["A-1-1"]}, "chaos-first-0001")
    second = buy(c, eid, admitted_buyer(c, eid), {"seats": ["A-1-2"]}, "chaos-second-001")
    dev = c.post(f"/v1/events/{eid}/devices", json={"gate": "north"}, headers=auth(event["api_key"]))
    assert dev.status_code == 201, dev.text
    device = dev.json()["token"]
    t1, t2 = first["tickets"][0]["code"], second["tickets"][0]["code"]
    warm_both_workers(stack.url, event, device, t1)
    # A buyer with a hold who will check out during the outage; one who will try to hold.
    payer = admitted_buyer(c, eid)
    payer_hold = hold(c, eid, payer, {"seats": ["A-1-5"]})
    assert payer_hold.status_code == 201, payer_hold.text
    holder = admitted_buyer(c, eid)
    # Buyers mid-sale when Redis goes.
    give_up_at = time.monotonic() + 90
    crowd = [MidSaleBuyer(stack.url, eid, admitted_buyer(c, eid), f"chaos-crowd-{i:04d}", give_up_at)
             for i in range(6)]
    for b in crowd:
        b.start()
    until(lambda: sum(len(b.answers) for b in crowd) >= 3, 30, interval=0.02, what="the sale under way")

    redis_pid = stack.redis.proc.pid
    gone_at = time.monotonic()
    if fault == "killed":
        os.kill(redis_pid, signal.SIGKILL)
        stack.redis.proc.wait(10)
    else:
        os.kill(redis_pid, signal.SIGSTOP)
    try:
        # Holds and checkouts: 503 + Retry-After, fast.
        resp, took = timed(lambda: hold(c, eid, holder, {"seats": ["A-1-6"]}))
        assert resp.status_code == 503 and resp.headers.get("retry-after"), resp.text
        assert resp.json()["error"]["code"] == "unavailable" and took < FAST_S, took
        resp, took = timed(lambda: checkout(c, payer_hold.json()["hold_id"], payer, "chaos-payer-0001"))
        assert resp.status_code == 503 and resp.headers.get("retry-after"), resp.text
        assert took < FAST_S, f"checkout answered after {took:.1f} s"
        # Door: a ticket never scanned is admitted, degraded; the manifest and uploads wait for Redis.
        with fresh(stack.url) as door:
            resp, took = timed(lambda: door.post("/v1/scan", json={"code": t2, "scan_id": "chaos-t2"},
                                                 headers=auth(device)))
            assert resp.status_code == 200 and took < FAST_S, (resp.text, took)
            assert resp.json()["result"] == "admitted" and resp.json()["degraded"] is True, resp.text
            resp, took = timed(lambda: door.get("/v1/scan/manifest", headers=auth(device)))
            assert resp.status_code == 503 and resp.headers.get("retry-after") and took < FAST_S, resp.text
            upload = {"scans": [{"scan_id": "chaos-off-1", "code": t1, "scanned_at": "2026-01-01T10:00:00.000Z"}]}
            resp, took = timed(lambda: door.post("/v1/scan/batch", json=upload, headers=auth(device)))
            assert resp.status_code == 503 and resp.headers.get("retry-after") and took < FAST_S, resp.text
        # Availability: the snapshot, marked stale once over a second old, from both workers.
        time.sleep(max(0.0, gone_at + 1.5 - time.monotonic()))
        with fresh(stack.url) as anyone:
            for _ in range(6):
                resp, took = timed(lambda: anyone.get(f"/v1/events/{eid}/availability"))
                assert resp.status_code == 200 and took < FAST_S, (resp.text, took)
                assert resp.json()["stale"] is True, resp.json()
        # Operators: not ready, and the scrape says Redis is down.
        assert httpx.get(stack.url + "/readyz", timeout=10).status_code == 503
        assert metric(stack.url, "flashgate_redis_up") == 0.0
        assert (metric(stack.url, "flashgate_snapshot_age_seconds") or 0.0) >= 1.0
        if fault == "killed":
            # Past 10 s the snapshot is no longer served: 503 + Retry-After.
            time.sleep(max(0.0, gone_at + 10.5 - time.monotonic()))
            resp = c.get(f"/v1/events/{eid}/availability")
            assert resp.status_code == 503 and resp.headers.get("retry-after"), resp.text
        else:
            time.sleep(max(0.0, gone_at + STALL_S - time.monotonic()))
    finally:
        if fault == "killed":
            stack.redis.start()  # same port, same append-only file
        else:
            os.kill(redis_pid, signal.SIGCONT)

    # Back: nothing restarted. The buyer caught at checkout finishes with the same key.
    def paid() -> httpx.Response | None:
        resp = checkout(c, payer_hold.json()["hold_id"], payer, "chaos-payer-0001")
        return resp if resp.status_code == 201 else None

    order = until(paid, 30, interval=0.5, what="the payer's retried checkout")
    assert order.json()["status"] == "paid" and order.json()["tickets"][0]["seat"] == "A-1-5"
    # The buyer whose hold of A-1-6 was answered 503 asks again and gets it. (A stalled Redis made
    # that hold when it resumed; the worker that answered 503 gives it back once Redis answers again,
    # whichever worker the buyer reaches next, or the seat would be the buyer's own lost hold's until
    # the hold time ends.)
    def held() -> httpx.Response | None:
        resp = hold(c, eid, holder, {"seats": ["A-1-6"]})
        return None if resp.status_code == 503 else resp

    again_held = until(held, 30, interval=0.5, what="an answer to the hold")
    assert again_held.status_code == 201, again_held.text
    # A new buyer goes through the waiting room, holds and pays.
    late = admitted_buyer(c, eid)
    bought = buy(c, eid, late, {"seats": ["A-1-7"]}, "chaos-late-00001")
    assert bought["status"] == "paid"
    for b in crowd:
        b.join(max(0.0, give_up_at - time.monotonic()))
    answers = [a.status_code if a is not None else None for b in crowd for a in b.answers]
    assert answers == [201] * len(crowd) * MidSaleBuyer.PURCHASES, [a.text if a is not None else None
                                                                   for b in crowd for a in b.answers]
    assert any(b.retries for b in crowd), "no buyer was caught mid-sale; the test proves nothing"
    # Availability is fresh again.
    until(lambda: c.get(f"/v1/events/{eid}/availability").json().get("stale") is False, 10, what="fresh availability")
    # The degraded scan was replayed: online now, the second scan of that ticket is a duplicate.
    until(lambda: scan_stats(c, event)["admitted"] == 2, 30, what="the degraded scan replayed")
    again = c.post("/v1/scan", json={"code": t2}, headers=auth(device)).json()
    assert again["result"] == "duplicate" and again["degraded"] is False, again
    assert again["first_scan"]["scan_id"] == "chaos-t2", again
    # Operators: ready, Redis up, the ledger drained and the audit clean; every process the same.
    until(lambda: httpx.get(stack.url + "/readyz", timeout=10).status_code == 200, 10, what="ready")
    assert metric(stack.url, "flashgate_redis_up") == 1.0
    report = audit_clean(stack.settings, eid)
    assert report.ok, failed(report)
    assert all(p.poll() is None for p in stack.workers.values()), "a worker died"
    # What the operator reads in the gateway's log (one JSON line each).
    log = next(stack.log_dir.glob("gateway-*.log")).read_text()
    for line in ("Redis unavailable", "snapshot refresh failed; serving the last snapshot",
                 "Redis unavailable: scanning degraded", "Redis answers again: scanning online",
                 "degraded scans replayed"):
        assert f'"msg":"{line}"' in log, line
    orders = c.get(f"/v1/events/{eid}/orders", headers=auth(event["api_key"])).json()["orders"]
    assert len(orders) == 2 + 1 + 1 + len(crowd) * MidSaleBuyer.PURCHASES
