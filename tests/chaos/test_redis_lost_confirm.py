"""A Redis failover that loses acknowledged confirms: Redis comes back from older data (here a
snapshot taken before a sale the ledger had already written to Postgres), so the sold seats look
free again and the ticket serial counter is behind.

The same seat is sold again to another buyer. Postgres keeps the first sale and refuses the second
ticket (uq_tickets_live_seat, uq_tickets_serial); the ledger records the refused order, goes on
with the entries behind it, moves the serial counter past Postgres's, refunds the second buyer
through the payment provider (once, whoever asks again) and tells them (order status, e-mail); the
audit reports the incident, naming both orders and the seat.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import redis

from gateway.core.config import Settings
from gateway.stack.embedded import RedisServer
from gateway.store.keys import event_key, notify_key
from tests.chaos.redis_faults import failed, run_audit, until
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import start_gateway, start_worker
from tests.utils.servers import run_async

pytestmark = pytest.mark.slow

REFUSED = "ledger: no sale refused by Postgres (Redis lost a confirmed sale, then sold it again)"
SOLD_BITS = "postgres: valid seat tickets match Redis sold bits"


def buyer(c: httpx.Client) -> dict[str, str]:
    resp = c.post("/v1/buyer-token")
    assert resp.status_code == 201, resp.text
    return auth(resp.json()["buyer_token"])


def buy(c: httpx.Client, event_id: int, seats: list[str], key: str, email: str) -> dict:
    me = buyer(c)
    hold = until(lambda: (r := c.post(f"/v1/events/{event_id}/holds", json={"seats": seats}, headers=me))
                 .status_code == 201 and r, 30, what=f"a hold of {seats}")

    def checkout() -> httpx.Response | None:  # a 503 (Redis reconnecting) is retried with the same key
        resp = c.post(f"/v1/holds/{hold.json()['hold_id']}/checkout", json={"email": email},
                      headers={**me, "Idempotency-Key": key})
        return None if resp.status_code == 503 else resp

    order = until(checkout, 30, interval=0.5, what="an answer to the checkout")
    assert order.status_code == 201, order.text
    return order.json()


def pg(database_url: str, sql: str, *args):
    async def go():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return run_async(go)


def test_a_sale_lost_by_a_redis_rollback_is_refused_refunded_and_reported(settings: Settings, database_url: str,
                                                                           tmp_path: Path, sim: httpx.Client,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHGATE_NOTIFY_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")  # the organiser's webhook
    server = RedisServer(tmp_path / "redis").start()  # no append-only file: a restart loads the last SAVE
    local = settings.model_copy(update={"redis_url": server.url, "redis_prefix": "lost",
                                        "data_dir": tmp_path / "data"})
    control = redis.Redis.from_url(server.url)
    try:
        with start_gateway(local, tmp_path) as url, start_worker(local, "ledger", tmp_path) as ledger, \
                httpx.Client(base_url=url, timeout=30) as c:
            _, key = run_async(new_org, database_url, "Chaos Rollback")
            spec = {**seat_spec(sections=1, rows=1, seats=10),
                    "webhook": {"url": "http://127.0.0.1:9/flashgate", "secret": "s" * 32}}
            created = c.post("/v1/events", json=spec, headers=auth(key))
            assert created.status_code == 201, created.text
            eid = created.json()["id"]
            assert c.post(f"/v1/events/{eid}/open", headers=auth(key)).status_code == 200

            def written(order_id: str) -> bool:
                return bool(pg(database_url, "SELECT 1 FROM tickets WHERE order_id = $1::text::uuid", order_id))

            early = buy(c, eid, ["A-1-3"], "lost-early-0001", "early@example.org")
            until(lambda: written(early["order_id"]), 30, what="the early sale in Postgres")
            control.save()  # the older state the failover will come back with
            winner = buy(c, eid, ["A-1-1", "A-1-2"], "lost-winner-001", "winner@example.org")
            until(lambda: written(winner["order_id"]), 30, what="the winner's sale in Postgres")

            # Failover to the older data: the winner's sale is gone from Redis.
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
            server.start()  # same port; loads the snapshot
            assert not control.hget(event_key("lost", eid, "orders"), winner["order_id"])

            # Redis sells A-1-1 again; the buyer is told "paid" with a ticket, as for any sale. (The
            # ledger worker is held still meanwhile, so that it meets the sale with the provider down.)
            os.kill(ledger.pid, signal.SIGSTOP)
            try:
                loser = buy(c, eid, ["A-1-1"], "lost-loser-0001", "loser@example.org")
                sim.put("/_config", json={"down": True}).raise_for_status()
            finally:
                os.kill(ledger.pid, signal.SIGCONT)
            assert loser["status"] == "paid" and loser["tickets"][0]["seat"] == "A-1-1"
            # Its serial is one the winner already has, so its code is the winner's code: the door
            # cannot tell the two apart (docs/operations.md, "Runbook: Redis").
            assert loser["tickets"][0]["code"] in {t["code"] for t in winner["tickets"]}

            # Postgres refuses it and the ledger records it; the provider is down: the refund waits.
            def recorded() -> list:
                return pg(database_url, "SELECT * FROM sale_conflicts WHERE order_id = $1::text::uuid",
                          loser["order_id"])

            until(recorded, 30, what="the refused sale recorded")
            checks = failed(run_audit(local, eid))
            assert "refund not made yet" in checks[REFUSED], checks
            waiting = c.get(f"/v1/orders/{loser['order_id']}", headers=auth(loser["order_token"])).json()
            assert waiting["status"] == "paid" and waiting["tickets"] == [], waiting  # until the refund is made
            until(lambda: "refund of a refused sale failed" in (tmp_path / "worker-ledger.log").read_text(), 30,
                  what="the failed refund logged")
            sim.put("/_config", json={"down": False}).raise_for_status()

            # The provider is back: the next ledger round refunds it.
            def refunded() -> list:
                return pg(database_url, "SELECT * FROM sale_conflicts WHERE order_id = $1::text::uuid "
                                        "AND refunded_at IS NOT NULL", loser["order_id"])

            conflict = until(refunded, 30, what="the refused sale refunded")[0]
            assert [str(o) for o in conflict["other_orders"]] == [winner["order_id"]]
            seat_a11 = pg(database_url, "SELECT seat_index FROM seats WHERE event_id = $1 AND label = 'A-1-1'",
                          eid)[0]["seat_index"]
            assert list(conflict["seats"]) == [seat_a11]
            live = pg(database_url, "SELECT order_id::text FROM tickets WHERE event_id = $1 AND seat_index = $2 "
                                    "AND status = 'valid'", eid, seat_a11)
            assert [r["order_id"] for r in live] == [winner["order_id"]]  # the first sale keeps the seat
            order_row = pg(database_url, "SELECT status FROM orders WHERE id = $1::text::uuid", loser["order_id"])
            assert order_row[0]["status"] == "refunded"
            payments = pg(database_url, "SELECT kind, provider_ref FROM payments WHERE order_id = $1::text::uuid "
                                        "ORDER BY kind", loser["order_id"])
            assert [p["kind"] for p in payments] == ["capture", "refund"]
            assert payments[1]["provider_ref"] == conflict["refund_ref"]

            def at_provider() -> dict:
                return sim.get(f"/v1/payments/{payments[0]['provider_ref']}").json()

            assert at_provider()["refunded_minor"] == loser["total_minor"] == at_provider()["captured_minor"]

            # The loser is told: the order says refunded without tickets, and an e-mail is queued.
            mine = c.get(f"/v1/orders/{loser['order_id']}", headers=auth(loser["order_token"]))
            assert mine.status_code == 200 and mine.json()["status"] == "refunded", mine.text
            assert mine.json()["tickets"] == []
            queued = [(f[b"kind"], orjson.loads(f[b"payload"])) for _, f in control.xrange(notify_key("lost"))]
            # (their purchase confirmation may be queued too, depending on when the notifier read it)
            told = [m for k, m in queued if k == b"email" and m["to"] == "loser@example.org"
                    and "refunded" in m["subject"]]
            assert len(told) == 1, queued
            hooks = [m["body"] for k, m in queued if k == b"webhook" and m["event_type"] == "order.refunded"]
            assert hooks == [{"order_id": loser["order_id"], "event_id": eid, "status": "refunded",
                              "refund_id": conflict["refund_ref"], "amount_minor": loser["total_minor"],
                              "currency": "EUR", "reason": "seat_conflict"}], hooks

            # The organiser refunding it again gets the same refund; the seat stays the winner's.
            again = c.post(f"/v1/orders/{loser['order_id']}/refund", json={}, headers=auth(key))
            assert again.status_code == 200, again.text
            assert again.json()["refund_id"] == conflict["refund_ref"] and again.json()["returned_to_sale"] == 0
            assert at_provider()["refunded_minor"] == loser["total_minor"]  # refunded once
            hold = c.post(f"/v1/events/{eid}/holds", json={"seats": ["A-1-1"]}, headers=buyer(c))
            assert hold.status_code == 409, hold.text

            # The ledger was not held back, and the serial counter moved past the winner's tickets:
            # a later sale is written whole.
            after = buy(c, eid, ["A-1-5"], "lost-after-0001", "after@example.org")
            until(lambda: written(after["order_id"]), 30, what="a later sale in Postgres")
            winner_serials = {t["serial"] for t in winner["tickets"]}
            assert after["tickets"][0]["serial"] > max(winner_serials)
            assert control.xlen(event_key("lost", eid, "ledger:dead")) == 0

            # The audit reports the incident and nothing else: the refused sale with both orders and
            # the seat, and the seat Redis forgot (A-1-2, sold in Postgres, free in Redis).
            def drained():
                report = run_audit(local, eid)
                checks = failed(report)
                return checks if "ledger: stream drained into Postgres" not in checks else None

            checks = until(drained, 30, what="the ledger drained")
            assert set(checks) == {REFUSED, SOLD_BITS}, checks
            assert loser["order_id"] in checks[REFUSED] and winner["order_id"] in checks[REFUSED]
            assert "A-1-1" in checks[REFUSED] and "refunded" in checks[REFUSED]
            seat_a12 = pg(database_url, "SELECT seat_index FROM seats WHERE event_id = $1 AND label = 'A-1-2'",
                          eid)[0]["seat_index"]
            assert f"sold only in Postgres: seats [{seat_a12}]" in checks[SOLD_BITS], checks[SOLD_BITS]
            assert ledger.poll() is None, "the ledger worker died"
            log = (tmp_path / "worker-ledger.log").read_text()
            assert '"msg":"sale refused by Postgres: its tickets collide with a sale Redis no longer knows; the ' \
                   'order is refunded"' in log, log[-3000:]
            assert '"msg":"refused sale refunded"' in log
    finally:
        control.close()
        server.stop()
