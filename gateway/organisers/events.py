"""Events: creation (cold tier), status changes, and preloading into Redis."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from redis.asyncio import Redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.core.sealing import Sealer, event_context
from gateway.sale import inventory
from gateway.organisers.event_spec import EventSpec
from gateway.sale.layout import EventLayout, GAType
from gateway.store.keys import LEDGER_GROUP, event_key, ledger_set, on_sale_set
from gateway.store.scripts import Scripts

if TYPE_CHECKING:  # types only: the waiting room's admin module uses this one
    from gateway.sale.snapshots import SnapshotManager
    from gateway.waiting_room.admin import QueueAdmin

# Allowed status changes: action -> (from states, to state).
TRANSITIONS = {
    "open": ({"draft", "paused"}, "on_sale"),
    "pause": ({"on_sale"}, "paused"),
    "close": ({"draft", "on_sale", "paused"}, "closed"),
}
CHECKOUT_WINDOW_S = 120


def not_found(event_id: int | str) -> DomainError:
    return DomainError("event_not_found", "No such event.", details={"event_id": event_id})


def build_layout(event_id: int, spec: EventSpec) -> EventLayout:
    rows: list[tuple[int, str, int, list[str]]] = []
    prices: list[int] = []
    start = 0
    for s_index, section in enumerate(spec.sections):
        for row in section.rows:
            labels = row.labels()
            rows.append((s_index, row.label, start, labels))
            prices.extend([spec.price_tiers[row.price_tier]] * len(labels))
            start += len(labels)
    return EventLayout(event_id=event_id, currency=spec.currency, section_names=[s.name for s in spec.sections],
                       rows=rows, seat_price=prices,
                       ga={g.code: GAType(g.code, g.name, g.capacity, g.price_minor) for g in spec.ga})


async def create_event(pool: asyncpg.Pool, *, organisation_id: int, spec: EventSpec) -> dict[str, Any]:
    """Write the event and its seat map in one transaction; returns the public view."""
    key = Ed25519PrivateKey.generate()
    private_raw = key.private_bytes_raw()
    public_raw = key.public_key().public_bytes_raw()
    async with pool.acquire() as conn, conn.transaction():
        event_id = await conn.fetchval(
            """INSERT INTO events (organisation_id, name, venue, starts_at, currency, hold_ttl_s, per_buyer_limit,
                                   queue_mode, admission_rate, settings, signing_public_key, signing_private_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12) RETURNING id""",
            organisation_id, spec.name, spec.venue, spec.starts_at, spec.currency, spec.hold_ttl_s,
            spec.per_buyer_limit, spec.queue.enabled, spec.queue.admission_rate,
            orjson.dumps({"spec_version": 1, **({"webhook": spec.webhook.model_dump()} if spec.webhook else {})}
                         ).decode(), public_raw, private_raw)
        tiers = {}
        for code, price in spec.price_tiers.items():
            tiers[code] = await conn.fetchval(
                "INSERT INTO price_tiers (event_id, code, price_minor) VALUES ($1, $2, $3) RETURNING id",
                event_id, code, price)
        seat_records = []
        index = 0
        for s_pos, section in enumerate(spec.sections):
            section_id = await conn.fetchval(
                "INSERT INTO sections (event_id, position, name) VALUES ($1, $2, $3) RETURNING id",
                event_id, s_pos, section.name)
            row_ids = await conn.fetchmany(
                "INSERT INTO seat_rows (section_id, position, label) VALUES ($1, $2, $3) RETURNING id",
                [(section_id, r_pos, row.label) for r_pos, row in enumerate(section.rows)])
            for row, row_id in zip(section.rows, row_ids):
                for label in row.labels():
                    seat_records.append((event_id, row_id["id"], index, f"{section.name}-{row.label}-{label}",
                                         tiers[row.price_tier]))
                    index += 1
        if seat_records:
            await conn.copy_records_to_table("seats", records=seat_records,
                                             columns=["event_id", "row_id", "seat_index", "label", "price_tier_id"])
        if spec.ga:
            await conn.executemany(
                "INSERT INTO ticket_types (event_id, code, name, capacity, price_minor) VALUES ($1, $2, $3, $4, $5)",
                [(event_id, g.code, g.name, g.capacity, g.price_minor) for g in spec.ga])
    layout = build_layout(event_id, spec)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE events SET settings = settings || $2::jsonb WHERE id = $1", event_id,
                           orjson.dumps({"layout": orjson.loads(layout.to_json())}).decode())
    return await get_event(pool, organisation_id=organisation_id, event_id=event_id)


def _webhook(row: asyncpg.Record) -> dict[str, Any]:
    raw = row["webhook"]
    return orjson.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})


def _view(row: asyncpg.Record, ga: list[asyncpg.Record], sections: list[asyncpg.Record]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "venue": row["venue"],
        "starts_at": row["starts_at"].isoformat() if row["starts_at"] else None,
        "currency": row["currency"].strip(), "status": row["status"], "hold_ttl_s": row["hold_ttl_s"],
        "per_buyer_limit": row["per_buyer_limit"],
        "queue": {"enabled": row["queue_mode"], "admission_rate": row["admission_rate"]},
        "sections": [{"name": s["name"], "rows": s["rows"], "seats": s["seats"]} for s in sections],
        "ga": [{"code": g["code"], "name": g["name"], "capacity": g["capacity"], "price_minor": g["price_minor"]}
               for g in ga],
        "capacity": sum(s["seats"] for s in sections) + sum(g["capacity"] for g in ga),
        "webhook": {"url": _webhook(row)["url"]} if _webhook(row) else None,
        "created_at": row["created_at"].isoformat(),
    }


async def _load(conn: asyncpg.Connection | asyncpg.Pool, event_id: int, organisation_id: int | None
                ) -> asyncpg.Record:
    # Every column but the (large) settings document, of which only the webhook is needed here.
    row = await conn.fetchrow(
        """SELECT id, organisation_id, name, venue, starts_at, currency, status, hold_ttl_s, per_buyer_limit,
                  queue_mode, admission_rate, signing_public_key, signing_private_key, created_at,
                  settings->'webhook' AS webhook
           FROM events WHERE id = $1""", event_id)
    # Another organisation's event answers exactly like a missing one.
    if row is None or (organisation_id is not None and row["organisation_id"] != organisation_id):
        raise not_found(event_id)
    return row


async def get_event(pool: asyncpg.Pool, *, organisation_id: int | None, event_id: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        row = await _load(conn, event_id, organisation_id)
        ga = await conn.fetch("SELECT * FROM ticket_types WHERE event_id = $1 ORDER BY id", event_id)
        sections = await conn.fetch(
            """SELECT s.name, count(DISTINCT r.id)::int AS rows, count(st.id)::int AS seats
               FROM sections s LEFT JOIN seat_rows r ON r.section_id = s.id
               LEFT JOIN seats st ON st.row_id = r.id
               WHERE s.event_id = $1 GROUP BY s.id ORDER BY s.position""", event_id)
    return _view(row, ga, sections)


async def list_events(pool: asyncpg.Pool, *, organisation_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT id, name, status, currency, starts_at, created_at FROM events
           WHERE organisation_id = $1 ORDER BY id DESC LIMIT 500""", organisation_id)
    return [{"id": r["id"], "name": r["name"], "status": r["status"], "currency": r["currency"].strip(),
             "starts_at": r["starts_at"].isoformat() if r["starts_at"] else None,
             "created_at": r["created_at"].isoformat()} for r in rows]


async def load_layout(conn: asyncpg.Connection | asyncpg.Pool, event_id: int) -> EventLayout:
    raw = await conn.fetchval("SELECT settings->'layout' FROM events WHERE id = $1", event_id)
    if raw is None:
        raise not_found(event_id)
    return EventLayout.from_json(raw)


async def change_status(pool: asyncpg.Pool, *, redis: Redis, scripts: Scripts, prefix: str, sealer: Sealer,
                        organisation_id: int, event_id: int, action: str) -> dict[str, Any]:
    """Open, pause or close. Opening the first time preloads the inventory into Redis."""
    allowed, target = TRANSITIONS[action]
    async with pool.acquire() as conn:
        row = await _load(conn, event_id, organisation_id)
        if row["status"] not in allowed:
            raise DomainError("invalid_state", f"A {row['status']} event cannot be {action_past(action)}.",
                              details={"status": row["status"], "action": action})
        layout = await load_layout(conn, event_id)  # on this connection: never a second one from the pool
        if target == "on_sale" or row["status"] != "draft":
            await inventory.prepare_event(
                scripts=scripts, prefix=prefix, event_id=event_id, status=target, n_seats=layout.n_seats,
                hold_ttl_s=row["hold_ttl_s"], per_buyer_limit=row["per_buyer_limit"],
                checkout_s=CHECKOUT_WINDOW_S, ga={c: t.capacity for c, t in layout.ga.items()})
            await redis.set(event_key(prefix, event_id, "layout"), layout.to_json())
            # What checkout needs without Postgres: the event's name, owner and ticket-signing key
            # (sealed: a Redis dump must not let anyone mint tickets).
            await redis.hset(event_key(prefix, event_id, "info"), mapping={
                "name": row["name"], "organisation_id": row["organisation_id"],
                "signing_private": sealer.seal(row["signing_private_key"], context=event_context(event_id)), "signing_public": row["signing_public_key"],
                "webhook_url": _webhook(row).get("url", ""), "webhook_secret": _webhook(row).get("secret", "")})
            await ensure_ledger_group(redis, prefix, event_id)
            await redis.hset(event_key(prefix, event_id, "meta"), mapping={
                "queue_mode": int(row["queue_mode"]), "admission_rate": row["admission_rate"],
                "updated_at": time.time()})
            if target == "closed":
                await redis.srem(on_sale_set(prefix), event_id)
            else:
                await redis.sadd(on_sale_set(prefix), event_id)
        await conn.execute("UPDATE events SET status = $2 WHERE id = $1", event_id, target)
    return await get_event(pool, organisation_id=organisation_id, event_id=event_id)


async def ensure_ledger_group(redis: Any, prefix: str, event_id: int) -> None:
    """The ledger consumer group exists before the first sale, so no entry is ever missed."""
    from redis.exceptions import ResponseError

    try:
        await redis.xgroup_create(event_key(prefix, event_id, "ledger"), LEDGER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    await redis.sadd(ledger_set(prefix), event_id)


def action_past(action: str) -> str:
    return {"open": "opened", "pause": "paused", "close": "closed"}[action]


class EventAdmin:
    """The organiser's events: create, list, read, open / pause / close. A status change reaches
    this worker's snapshot and waiting-room caches at once (other workers within a refresh)."""

    def __init__(self, runtime: Runtime, *, snapshots: SnapshotManager | None = None,
                 queue: QueueAdmin | None = None) -> None:
        self.runtime = runtime
        self.snapshots = snapshots
        self.queue = queue

    async def create(self, organisation_id: int, spec: EventSpec) -> dict[str, Any]:
        return await create_event(await self.runtime.pg(), organisation_id=organisation_id, spec=spec)

    async def list(self, organisation_id: int) -> list[dict[str, Any]]:
        return await list_events(await self.runtime.pg(), organisation_id=organisation_id)

    async def get(self, organisation_id: int, event_id: int) -> dict[str, Any]:
        return await get_event(await self.runtime.pg(), organisation_id=organisation_id, event_id=event_id)

    async def change_status(self, organisation_id: int, event_id: int, action: str) -> dict[str, Any]:
        rt = self.runtime
        view = await change_status(await rt.pg(), redis=rt.redis, scripts=rt.scripts, prefix=rt.prefix,
                                   sealer=rt.sealer,
                                   organisation_id=organisation_id, event_id=event_id, action=action)
        if self.snapshots is not None:
            await self.snapshots.refresh_event(event_id)
        if self.queue is not None:  # opening closes the pre-queue (shuffle) at once
            await self.queue.event_changed(event_id)
        return view
