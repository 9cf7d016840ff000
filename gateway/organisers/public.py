"""What a buyer may know of an event: `GET /v1/events/{id}/public`.

Answered from Redis (the event layout and meta hash, through the worker's
snapshot), so the buyer page loads while Postgres is away; venue and start time
come from Postgres once per worker and are left out when it is unreachable.
Before opening, an event whose organiser opened the pre-queue or scheduled the
sale (`sale_opens_at`) is public too (its seat map then comes from Postgres).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.orders.tickets import EventInfo, event_info
from gateway.organisers import events
from gateway.sale.layout import EventLayout
from gateway.sale.snapshots import SnapshotManager
from gateway.store.keys import event_key, qkey

COLD_INFO_TTL_S = 300.0
CACHE_MAX = 10_000
UNSCHEDULED_TTL_S = 5.0  # a draft scheduled meanwhile becomes public within this long


def public_layout(layout: EventLayout) -> dict[str, Any]:
    """The seat map as the page draws it: sections -> rows -> seat labels, with prices."""
    sections: list[dict[str, Any]] = [{"name": name, "rows": []} for name in layout.section_names]
    prices: dict[int, int] = {}
    for s_index, row_label, first, labels in layout.rows:
        row_prices = layout.seat_price[first:first + len(labels)]
        for price in row_prices:
            prices[price] = prices.get(price, 0) + 1
        row: dict[str, Any] = {"label": row_label, "first_index": first, "seats": labels}
        if row_prices and min(row_prices) == max(row_prices):
            row["price_minor"] = row_prices[0]
        else:
            row["seat_prices"] = row_prices
        sections[s_index]["rows"].append(row)
    return {
        "currency": layout.currency, "n_seats": layout.n_seats, "sections": sections,
        "ga": [{"code": t.code, "name": t.name, "capacity": t.capacity, "price_minor": t.price_minor}
               for t in layout.ga.values()],
        "prices": [{"price_minor": p, "seats": n} for p, n in sorted(prices.items(), reverse=True)],
    }


class PublicEvents:
    def __init__(self, runtime: Runtime, *, snapshots: SnapshotManager) -> None:
        self.runtime = runtime
        self.snapshots = snapshots
        self._layouts: dict[int, tuple[EventLayout, dict[str, Any]]] = {}
        self._infos: dict[int, EventInfo] = {}
        self._cold: dict[int, tuple[dict[str, Any], float]] = {}
        self._unscheduled: dict[int, float] = {}

    async def public(self, event_id: int) -> dict[str, Any]:
        """Name, seat map, prices, sale and queue status of an event on sale (or in its pre-queue)."""
        rt = self.runtime
        try:
            view = await self.snapshots.get(event_id)
        except DomainError as err:  # never opened: public only while its pre-queue takes arrivals
            if err.code != "event_not_found":
                raise
            return await self._prequeue_event(event_id)
        cached = self._layouts.get(event_id)
        if cached is None or cached[0] is not view.layout:
            if len(self._layouts) > 1000:
                self._layouts.clear()
            cached = self._layouts[event_id] = (view.layout, public_layout(view.layout))
        info = await event_info(rt.redis, rt.prefix, event_id, self._infos, sealer=rt.sealer)
        status, queue_mode, ttl_ms, limit, opens, closes = await rt.redis.hmget(
            event_key(rt.prefix, event_id, "meta"), "status", "queue_mode", "hold_ttl_ms", "limit", "sale_opens_at",
            "sale_closes_at")
        cold = await self._cold_info(event_id)
        return {
            "id": event_id, "name": info.name, "venue": cold.get("venue"), "starts_at": cold.get("starts_at"),
            "status": status.decode() if status else view.status or "closed",
            "queue": await self._queue_info(event_id, queue_mode == b"1"),
            "hold_ttl_s": int(ttl_ms) // 1000 if ttl_ms else None,
            "per_buyer_limit": int(limit) if limit else None,
            "max_per_hold": rt.settings.max_seats_per_hold,
            "sale_opens_at": opens.decode() if opens else None, "sale_closes_at": closes.decode() if closes else None,
            **cached[1],
        }

    async def _queue_info(self, event_id: int, enabled: bool) -> dict[str, Any]:
        """Whether the event has a waiting room and, with a pre-queue, what anyone needs to check its
        order (docs/waiting-room.md, "Verifying the order"): the commitment, and once the sale opened
        the seed and the pre-queue's size."""
        rt = self.runtime
        commitment, seed, size, opened, sold_out = await rt.redis.hmget(
            qkey(rt.prefix, event_id, "state"), "commitment", "seed", "pre", "opened", "sold_out")
        info: dict[str, Any] = {"enabled": enabled}
        if sold_out == b"1":  # the final sell-out: tickets that come back are offered on the waiting list
            info["sold_out"] = True
            info["waitlist"] = f"/v1/events/{event_id}/waitlist"
        if commitment:
            info["order"] = {"commitment": commitment.decode(), "seed": seed.decode() if opened and seed else None,
                             "size": int(size) if opened and size is not None else None}
        return info

    async def _cold_info(self, event_id: int) -> dict[str, Any]:
        """Venue and start time (Postgres only), cached per worker; empty when Postgres is away."""
        hit = self._cold.get(event_id)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            pool = await self.runtime.pg()
            row = await pool.fetchrow("SELECT venue, starts_at FROM events WHERE id = $1", event_id)
            info = {"venue": row["venue"], "starts_at": row["starts_at"].isoformat() if row["starts_at"] else None} \
                if row is not None else {}
            ttl = COLD_INFO_TTL_S
        except Exception:  # the page must load without the cold tier
            info, ttl = {}, 5.0
        if len(self._cold) > CACHE_MAX:
            self._cold.clear()
        self._cold[event_id] = (info, now + ttl)
        return info

    async def _prequeue_event(self, event_id: int) -> dict[str, Any]:
        """An event before its sale opens, whose organiser opened the pre-queue or scheduled the sale: the
        seat map comes from Postgres (it reaches Redis at opening); with a pre-queue, buyers may join the
        waiting room already. Other drafts are not public."""
        rt = self.runtime
        prequeue = await rt.redis.hget(qkey(rt.prefix, event_id, "state"), "prequeue") == b"1"
        now = time.monotonic()
        if not prequeue and self._unscheduled.get(event_id, 0.0) > now:
            raise events.not_found(event_id)
        pool = await rt.pg()
        row = await pool.fetchrow("SELECT name, venue, starts_at, status, hold_ttl_s, per_buyer_limit, queue_mode, "
                                  "sale_opens_at, sale_closes_at, prequeue_opens_at FROM events WHERE id = $1",
                                  event_id)
        if row is None or not (prequeue or (row["status"] == "draft" and row["sale_opens_at"] is not None)):
            # Not public; remembered briefly so that unknown ids cost no Postgres query each.
            if len(self._unscheduled) > CACHE_MAX:
                self._unscheduled.clear()
            self._unscheduled[event_id] = now + UNSCHEDULED_TTL_S
            raise events.not_found(event_id)
        layout = await events.load_layout(pool, event_id)
        return {
            "id": event_id, "name": row["name"], "venue": row["venue"],
            "starts_at": row["starts_at"].isoformat() if row["starts_at"] else None,
            "status": row["status"],
            "queue": {"enabled": row["queue_mode"] or prequeue, "prequeue": prequeue},
            "hold_ttl_s": row["hold_ttl_s"],
            "per_buyer_limit": row["per_buyer_limit"], "max_per_hold": rt.settings.max_seats_per_hold,
            **events.schedule_view(row),
            **public_layout(layout),
        }
