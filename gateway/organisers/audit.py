"""`flashgate audit EVENT`: every invariant checked across Redis and Postgres.

Redis is the truth of the sale; Postgres must reflect every final write once the
ledger is drained. Besides the final state, the audit replays the sale's history (the
`changes` stream, gateway/organisers/history.py): a seat granted while sold, a hold expired
early or sold late, a GA type over capacity or a buyer over the limit at any instant fails it,
even when the end state looks right. The audit reports each check with a verdict and the
evidence (docs/audit.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from gateway.organisers.history import bits, replay_event
from gateway.sale import inventory
from gateway.store.keys import LEDGER_GROUP, event_key
from gateway.store.scripts import Scripts


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    event_id: int
    checks: list[Check] = field(default_factory=list)
    postgres: str = "primary"  # the server the Postgres checks read: "primary" or "replica"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def as_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "verdict": "pass" if self.ok else "FAIL",
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks]}


DRAINED_CHECK = "ledger: stream drained into Postgres"  # the one check that passes by waiting


async def audit_event(*, redis: Any, pool: asyncpg.Pool, prefix: str, event_id: int,
                      scripts: Scripts | None = None,
                      consistent: Callable[[], Awaitable[tuple[asyncpg.Pool, str]]] | None = None) -> Report:
    """Every check of the event: Redis's final state, its history, then Postgres against Redis. With
    `consistent` (gateway/db/replica.py), Postgres is read from the pool it gives once the ledger check is
    done: a read replica that has replayed everything the primary had by then, or the primary."""
    report = Report(event_id)
    scripts = scripts or Scripts(redis)
    snap = await inventory.read_snapshot(scripts=scripts, prefix=prefix, event_id=event_id)
    sold, held = bits(snap["sold"]), bits(snap["held"])
    n_seats = int(await redis.hget(event_key(prefix, event_id, "meta"), "n_seats") or 0)
    report.add("redis: no seat both held and sold", not (sold & held), f"overlap={sorted(sold & held)[:10]}")
    report.add("redis: seat bits within the venue", all(i < n_seats for i in sold | held))

    holds = {k.decode(): orjson.loads(v) for k, v in (await redis.hgetall(event_key(prefix, event_id, "hdata"))).items()}
    hold_seats: list[int] = [s for h in holds.values() for s in (h.get("s") or [])]
    report.add("redis: every held seat belongs to exactly one hold",
               sorted(hold_seats) == sorted(held) and len(hold_seats) == len(set(hold_seats)),
               f"held bits={len(held)} hold seats={len(hold_seats)}")
    zcard = await redis.zcard(event_key(prefix, event_id, "holds"))
    report.add("redis: hold index matches hold records", zcard == len(holds), f"zset={zcard} records={len(holds)}")

    orders_raw = await redis.hgetall(event_key(prefix, event_id, "orders"))
    orders = {k.decode(): orjson.loads(v) for k, v in orders_raw.items() if not k.startswith(b"hold:")}
    live = {oid: o for oid, o in orders.items() if not o.get("voided_at_ms")}
    order_seats = [s for o in live.values() for s in (o.get("seats") or [])]
    report.add("invariant 1: no seat sold twice", len(order_seats) == len(set(order_seats)),
               f"{len(order_seats) - len(set(order_seats))} duplicate(s)")
    report.add("redis: sold bits are exactly the seats of live orders", set(order_seats) == sold,
               f"sold bits={len(sold)} order seats={len(set(order_seats))}")
    for code, c in snap["ga"].items():
        ga_sold = sum(int((o.get("ga") or {}).get(code, 0)) for o in live.values())
        ga_held = sum(int((h.get("g") or {}).get(code, 0)) for h in holds.values())
        report.add(f"invariant 1: GA {code} sold + held <= capacity", c["sold"] + c["held"] <= c["cap"],
                   f"sold={c['sold']} held={c['held']} cap={c['cap']}")
        report.add(f"redis: GA {code} counters match orders and holds", c["sold"] == ga_sold and c["held"] == ga_held,
                   f"counters sold={c['sold']} held={c['held']}; orders={ga_sold} holds={ga_held}")
    converted = {o["hold_id"] for o in orders.values()}
    report.add("invariant 2: no hold both live and converted", not (converted & set(holds)),
               f"{len(converted & set(holds))} hold(s)")

    history = await replay_event(redis=redis, prefix=prefix, event_id=event_id)
    for name, ok, detail in history.checks():
        report.add(name, ok, detail)

    # Postgres, once the ledger stream is drained.
    stream = event_key(prefix, event_id, "ledger")
    pending = 0
    lag = 0
    try:
        for group in await redis.xinfo_groups(stream):
            if group["name"] in (LEDGER_GROUP, LEDGER_GROUP.encode()):
                pending = int(group.get("pending") or 0)
                lag = int(group.get("lag") or 0)
    except Exception:
        pass
    report.add(DRAINED_CHECK, pending == 0 and lag == 0, f"pending={pending} lag={lag}")
    if consistent is not None:
        pool, report.postgres = await consistent()

    # One consistent view of Postgres for every check below (the ledger may be writing meanwhile: orders
    # read by one query and not by the next made the checks disagree with each other).
    async with pool.acquire() as db, db.transaction(isolation="repeatable_read", readonly=True):
        rows = await db.fetch("SELECT id, status, hold_id FROM orders WHERE event_id = $1", event_id)
        pg_orders = {str(r["id"]): r for r in rows}
        # Sales Postgres refused (a Redis restored from older data sold again what it had forgotten):
        # reported here with their evidence; the orders they name are left out of the checks below.
        refused = await db.fetch(
            """SELECT c.order_id, c.seats, c.serials, c.other_orders, c.refund_ref, c.refunded_at, o.buyer,
                      (SELECT array_agg(s.label ORDER BY s.seat_index) FROM seats s
                       WHERE s.event_id = c.event_id AND s.seat_index = ANY(c.seats)) AS labels
               FROM sale_conflicts c JOIN orders o ON o.id = c.order_id
               WHERE c.event_id = $1 ORDER BY c.detected_at""", event_id)
        explained = {str(r["order_id"]) for r in refused} | {str(o) for r in refused for o in r["other_orders"]}
        report.add("ledger: no sale refused by Postgres (Redis lost a confirmed sale, then sold it again)", not refused,
                   f"{len(refused)} refused: " + "; ".join(
                       f"order {r['order_id']} (buyer {r['buyer']}, seats {list(r['labels'] or [])}, serials "
                       f"{list(r['serials'])}) collides with order(s) {[str(o) for o in r['other_orders']]} that "
                       "Postgres holds and Redis does not; "
                       + (f"refunded ({r['refund_ref']}) at {r['refunded_at'].isoformat()}" if r["refunded_at"]
                          else "refund not made yet") for r in refused[:5]))
        report.add("invariant 4: every order in Redis is in Postgres", set(orders) <= set(pg_orders),
                   f"missing={sorted(set(orders) - set(pg_orders))[:5]}")
        unknown = set(pg_orders) - set(orders) - explained
        report.add("invariant 4: no order in Postgres unknown to Redis", not unknown, f"unknown={sorted(unknown)[:5]}")
        wrong_status = [oid for oid, o in orders.items() if oid in pg_orders and oid not in explained
                        and pg_orders[oid]["status"] != ("refunded" if o.get("voided_at_ms") else "paid")]
        report.add("postgres: order status matches Redis (paid / refunded)", not wrong_status, f"{wrong_status[:5]}")

        counts = await db.fetch(
            """SELECT o.id, count(t.id) FILTER (WHERE t.status = 'valid') AS valid, count(t.id) AS total
               FROM orders o LEFT JOIN tickets t ON t.order_id = o.id WHERE o.event_id = $1 GROUP BY o.id""", event_id)
        bad = [str(r["id"]) for r in counts if str(r["id"]) not in explained and (
               r["total"] != int(orders.get(str(r["id"]), {}).get("count", -1))
               or (pg_orders[str(r["id"])]["status"] == "paid" and r["valid"] != r["total"])
               or (pg_orders[str(r["id"])]["status"] == "refunded" and r["valid"] != 0))]
        report.add("invariant 3: every order has exactly its tickets", not bad, f"{bad[:5]}")
        orphans = await db.fetchval(
            "SELECT count(*) FROM tickets t LEFT JOIN orders o ON o.id = t.order_id WHERE t.event_id = $1 AND o.id IS NULL",
            event_id)
        report.add("invariant 3: every ticket belongs to an order", orphans == 0, f"{orphans} orphan ticket(s)")
        dup = await db.fetchval(
            """SELECT count(*) FROM (SELECT seat_index FROM tickets WHERE event_id = $1 AND status = 'valid'
               AND seat_index IS NOT NULL GROUP BY seat_index HAVING count(*) > 1) d""", event_id)
        report.add("invariant 1: no seat with two valid tickets in Postgres", dup == 0, f"{dup} seat(s)")
        pg_sold = {r["seat_index"] for r in await db.fetch(
            "SELECT seat_index FROM tickets WHERE event_id = $1 AND status = 'valid' AND seat_index IS NOT NULL",
            event_id)}
        report.add("postgres: valid seat tickets match Redis sold bits", pg_sold == sold,
                   f"postgres={len(pg_sold)} redis={len(sold)}; sold only in Postgres: seats "
                   f"{sorted(pg_sold - sold)[:10]}, only in Redis: seats {sorted(sold - pg_sold)[:10]}")
        unpaid = await db.fetchval(
            """SELECT count(*) FROM orders o WHERE o.event_id = $1 AND NOT EXISTS
               (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.kind = 'capture')""", event_id)
        report.add("postgres: every order has its captured payment", unpaid == 0, f"{unpaid} order(s) without")
        unrefunded = await db.fetchval(
            """SELECT count(*) FROM orders o WHERE o.event_id = $1 AND o.status = 'refunded' AND NOT EXISTS
               (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.kind = 'refund')""", event_id)
        report.add("postgres: every refunded order has its refund", unrefunded == 0, f"{unrefunded} order(s) without")
        orphan_pay = await db.fetchval(
            """SELECT count(*) FROM payments c WHERE c.order_id IS NULL AND c.kind = 'capture' AND c.hold_id IN
               (SELECT hold_id FROM payments WHERE order_id IS NULL AND kind = 'capture') AND NOT EXISTS
               (SELECT 1 FROM payments r WHERE r.order_id IS NULL AND r.kind = 'refund' AND r.hold_id = c.hold_id)
               AND c.hold_id LIKE $1""", f"{event_id}-%")
        report.add("postgres: every payment without an order was refunded", orphan_pay == 0, f"{orphan_pay}")
        scans = await db.fetchval(
            """SELECT count(*) FROM (SELECT ticket_id FROM scans WHERE event_id = $1 AND result = 'admitted'
               GROUP BY ticket_id HAVING count(*) > 1) d""", event_id)
        report.add("invariant 5: no ticket admitted twice", scans == 0, f"{scans}")
    return report


def format_report(report: Report) -> str:
    lines = [f"audit of event {report.event_id}"]
    for c in report.checks:
        lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f"  ({c.detail})" if c.detail and not c.ok else ""))
    failed = sum(not c.ok for c in report.checks)
    lines.append(f"verdict: {'PASS' if report.ok else 'FAIL'} ({len(report.checks) - failed} passed, {failed} failed)")
    return "\n".join(lines)


__all__ = ["audit_event", "format_report", "Report", "uuid"]
