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
from gateway.core.sealing import Sealer, event_context, event_webhook_context
from gateway.sale import inventory
from gateway.organisers.event_spec import EventSpec
from gateway.providers.egress import DestinationRefused, EgressPolicy
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
# Writing a seat map of up to 250,000 seats takes seconds (the pool's per-query budget is 10 s).
SEAT_MAP_WRITE_TIMEOUT_S = 120.0


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
            prices.extend(spec.price_tiers[tier] for tier in row.tiers())
            start += len(labels)
    return EventLayout(event_id=event_id, currency=spec.currency, section_names=[s.name for s in spec.sections],
                       rows=rows, seat_price=prices,
                       ga={g.code: GAType(g.code, g.name, g.capacity, g.price_minor) for g in spec.ga})


async def create_event(pool: asyncpg.Pool, *, organisation_id: int, spec: EventSpec) -> dict[str, Any]:
    """Write the event and its seat map in one transaction; returns the public view."""
    key = Ed25519PrivateKey.generate()
    private_raw = key.private_bytes_raw()
    public_raw = key.public_key().public_bytes_raw()
    opens, closes, prequeue = spec.schedule()
    async with pool.acquire() as conn, conn.transaction():
        event_id = await conn.fetchval(
            """INSERT INTO events (organisation_id, name, venue, starts_at, currency, hold_ttl_s, per_buyer_limit,
                                   queue_mode, admission_rate, settings, signing_public_key, signing_private_key,
                                   sale_opens_at, sale_closes_at, prequeue_opens_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15) RETURNING id""",
            organisation_id, spec.name, spec.venue, spec.starts_at, spec.currency, spec.hold_ttl_s,
            spec.per_buyer_limit, spec.queue.enabled, spec.queue.admission_rate,
            orjson.dumps({"spec_version": 1, "prequeue_s": spec.queue.prequeue_s,
                          **({"webhook": spec.webhook.model_dump()} if spec.webhook else {})}
                         ).decode(), public_raw, private_raw, opens, closes, prequeue)
        tiers = {}
        for code, price in spec.price_tiers.items():
            tiers[code] = await conn.fetchval(
                "INSERT INTO price_tiers (event_id, code, price_minor) VALUES ($1, $2, $3) RETURNING id",
                event_id, code, price)
        await _insert_seat_map(conn, event_id, spec, tiers)
        if spec.ga:
            await conn.executemany(
                "INSERT INTO ticket_types (event_id, code, name, capacity, price_minor) VALUES ($1, $2, $3, $4, $5)",
                [(event_id, g.code, g.name, g.capacity, g.price_minor) for g in spec.ga])
    layout = build_layout(event_id, spec)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE events SET settings = settings || $2::jsonb WHERE id = $1", event_id,
                           orjson.dumps({"layout": orjson.loads(layout.to_json())}).decode())
    return await get_event(pool, organisation_id=organisation_id, event_id=event_id)


async def _insert_seat_map(conn: asyncpg.Connection, event_id: int, spec: EventSpec, tiers: dict[str, int]) -> None:
    """Sections, rows and seats (seat_index = the seat's bit in Redis, in seat-map order)."""
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
            for label, tier in zip(row.labels(), row.tiers()):
                seat_records.append((event_id, row_id["id"], index, f"{section.name}-{row.label}-{label}",
                                     tiers[tier]))
                index += 1
    if seat_records:
        await conn.copy_records_to_table("seats", records=seat_records, timeout=SEAT_MAP_WRITE_TIMEOUT_S,
                                         columns=["event_id", "row_id", "seat_index", "label", "price_tier_id"])


def seat_map_frozen(status: str) -> DomainError:
    return DomainError("invalid_state", f"The seat map of a {status} event cannot change; only a draft's can.",
                       details={"status": status})


async def replace_seat_map(pool: asyncpg.Pool, *, organisation_id: int, event_id: int,
                           csv_text: str) -> dict[str, Any]:
    """Replace the seat map of a draft event with one read from CSV (GA types and price tiers stay)."""
    import asyncio

    from gateway.organisers import seatmap_csv

    row = await pool.fetchrow("SELECT organisation_id, status, currency, settings->'layout' AS layout FROM events "
                              "WHERE id = $1", event_id)
    if row is None or row["organisation_id"] != organisation_id:
        raise not_found(event_id)
    if row["status"] != "draft":
        raise seat_map_frozen(row["status"])
    tier_rows = await pool.fetch("SELECT id, code, price_minor FROM price_tiers WHERE event_id = $1", event_id)

    def read() -> EventSpec:  # seconds of CPU for 250,000 seats: in a thread, not on the event loop
        sections = seatmap_csv.parse(csv_text, price_tiers=[t["code"] for t in tier_rows])
        return EventSpec.model_validate({"name": "-", "currency": row["currency"].strip(), "sections": sections,
                                         "price_tiers": {t["code"]: t["price_minor"] for t in tier_rows}})

    spec = await asyncio.to_thread(read)
    layout = build_layout(event_id, spec)
    layout.ga.update(EventLayout.from_json(row["layout"]).ga)
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval("SELECT status FROM events WHERE id = $1 FOR UPDATE", event_id)
        if status != "draft":  # opened while the file was read
            raise seat_map_frozen(status)
        await conn.execute("DELETE FROM sections WHERE event_id = $1", event_id,  # rows and seats cascade
                           timeout=SEAT_MAP_WRITE_TIMEOUT_S)
        await _insert_seat_map(conn, event_id, spec, {t["code"]: t["id"] for t in tier_rows})
        await conn.execute("UPDATE events SET settings = settings || $2::jsonb WHERE id = $1", event_id,
                           orjson.dumps({"layout": orjson.loads(layout.to_json())}).decode())
    return await get_event(pool, organisation_id=organisation_id, event_id=event_id)


def _webhook(row: asyncpg.Record) -> dict[str, Any]:
    raw = row["webhook"]
    return orjson.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def schedule_view(row: Any) -> dict[str, Any]:
    return {"sale_opens_at": _iso(row["sale_opens_at"]), "sale_closes_at": _iso(row["sale_closes_at"]),
            "prequeue_opens_at": _iso(row["prequeue_opens_at"])}


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
        "schedule": schedule_view(row),
        "created_at": row["created_at"].isoformat(),
    }


async def _load(conn: asyncpg.Connection | asyncpg.Pool, event_id: int, organisation_id: int | None
                ) -> asyncpg.Record:
    # Every column but the (large) settings document, of which only the webhook is needed here.
    row = await conn.fetchrow(
        """SELECT id, organisation_id, name, venue, starts_at, currency, status, hold_ttl_s, per_buyer_limit,
                  queue_mode, admission_rate, signing_public_key, signing_private_key, created_at,
                  sale_opens_at, sale_closes_at, prequeue_opens_at, prequeue_opened_at,
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


async def check_owner_for_reads(runtime: Runtime, *, organisation_id: int, event_id: int) -> None:
    """404 unless the organisation owns the event, checked where lag-tolerant reads go (the read replica,
    gateway/db/replica.py); an event the replica does not have yet (created a moment ago) is looked up on
    the primary."""
    sql = "SELECT organisation_id FROM events WHERE id = $1"

    async def owner(pool: asyncpg.Pool) -> int | None:
        return await pool.fetchval(sql, event_id)

    found, state = await runtime.reads.run(owner)
    if found is None and state is not None and state.usable:
        found = await (await runtime.pg()).fetchval(sql, event_id)
    if found != organisation_id:
        raise not_found(event_id)


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
            # What checkout needs without Postgres: the event's name, owner, ticket-signing key and webhook
            # (the key and the webhook's secret sealed: a Redis dump must not let anyone mint tickets or
            # sign webhooks in the organiser's name).
            secret = _webhook(row).get("secret", "")
            info_key = event_key(prefix, event_id, "info")
            await redis.hset(info_key, mapping={
                "name": row["name"], "organisation_id": row["organisation_id"],
                "signing_private": sealer.seal(row["signing_private_key"], context=event_context(event_id)),
                "signing_public": row["signing_public_key"], "webhook_url": _webhook(row).get("url", ""),
                "webhook_sealed": sealer.seal(secret.encode(), context=event_webhook_context(event_id)) if secret else ""})
            await redis.hdel(info_key, "webhook_secret")  # a clear copy written by an earlier version
            await ensure_ledger_group(redis, prefix, event_id)
            await redis.hset(event_key(prefix, event_id, "meta"), mapping={
                "queue_mode": int(row["queue_mode"]), "admission_rate": row["admission_rate"],
                "updated_at": time.time(), **meta_schedule(row)})
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


async def check_webhook(runtime: Runtime, url: str) -> None:
    """A webhook must point at a public address (checked again at every delivery)."""
    try:
        await EgressPolicy(runtime.settings.notify.webhook_allow_networks).resolve(url)
    except DestinationRefused as exc:
        raise DomainError("validation_error", f"Invalid request: webhook.url: {exc}.",
                          details={"errors": [{"loc": ["body", "webhook", "url"], "msg": str(exc),
                                               "type": "webhook_destination"}]}, status=422) from None


def meta_schedule(row: Any) -> dict[str, str]:
    """The schedule as kept in the event's Redis meta hash (public event info reads it from there)."""
    return {"sale_opens_at": _iso(row["sale_opens_at"]) or "", "sale_closes_at": _iso(row["sale_closes_at"]) or ""}


async def set_schedule(pool: asyncpg.Pool, *, redis: Redis, prefix: str, organisation_id: int, event_id: int,
                       opens: Any, closes: Any) -> dict[str, Any]:
    """Set (or clear, with None) the times the sale opens and closes by itself."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT organisation_id, status, queue_mode, sale_opens_at, (settings->>'prequeue_s')::int AS prequeue_s
               FROM events WHERE id = $1 FOR UPDATE""", event_id)
        if row is None or row["organisation_id"] != organisation_id:
            raise not_found(event_id)
        if row["status"] == "closed":
            raise DomainError("invalid_state", "A closed event has no schedule.", details={"status": "closed"})
        if row["status"] != "draft" and opens != row["sale_opens_at"]:
            raise DomainError("invalid_state", "The sale has opened already; only sale_closes_at can change.",
                              details={"status": row["status"], "fields": ["sale_opens_at"]})
        prequeue = None
        lead = row["prequeue_s"] if row["prequeue_s"] is not None else 0
        if opens is not None and row["queue_mode"] and lead:
            from datetime import timedelta

            prequeue = opens - timedelta(seconds=lead)
        updated = await conn.fetchrow(
            """UPDATE events SET sale_opens_at = $2, sale_closes_at = $3, prequeue_opens_at = $4 WHERE id = $1
               RETURNING sale_opens_at, sale_closes_at, prequeue_opens_at""", event_id, opens, closes, prequeue)
    meta = event_key(prefix, event_id, "meta")
    if await redis.exists(meta):
        await redis.hset(meta, mapping=meta_schedule(updated))
    return await get_event(pool, organisation_id=organisation_id, event_id=event_id)


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
        if spec.webhook is not None:
            await check_webhook(self.runtime, spec.webhook.url)
        return await create_event(await self.runtime.pg(), organisation_id=organisation_id, spec=spec)

    async def list(self, organisation_id: int) -> list[dict[str, Any]]:
        return await list_events(await self.runtime.pg(), organisation_id=organisation_id)

    async def get(self, organisation_id: int, event_id: int) -> dict[str, Any]:
        return await get_event(await self.runtime.pg(), organisation_id=organisation_id, event_id=event_id)

    async def import_seat_map(self, organisation_id: int, event_id: int, csv_text: str) -> dict[str, Any]:
        return await replace_seat_map(await self.runtime.pg(), organisation_id=organisation_id, event_id=event_id,
                                      csv_text=csv_text)

    async def set_schedule(self, organisation_id: int, event_id: int, *, opens: Any, closes: Any) -> dict[str, Any]:
        rt = self.runtime
        return await set_schedule(await rt.pg(), redis=rt.redis, prefix=rt.prefix, organisation_id=organisation_id,
                                  event_id=event_id, opens=opens, closes=closes)

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
