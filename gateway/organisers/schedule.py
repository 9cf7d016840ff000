"""Scheduled sales: open the pre-queue, open the sale and close it at the organiser's times.

`run_due` is one round, run every second by the expiry worker (`gateway/workers/expiry.py`). Due
events come from two partial indexes (migrations/0004_sale_schedule.sql), so a round costs three
indexed queries however many events exist. Each step is the same call an organiser makes by hand
(pre-queue, open, close), so a scheduled opening behaves exactly like a manual one (the pre-queue is
shuffled at opening). One process at a time does a round (a Redis lease), and every step is safe
to repeat: a transition that already happened is skipped.

A sale paused by hand is not reopened by the schedule; it still closes at `sale_closes_at`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.organisers.events import EventAdmin
from gateway.store.keys import schedule_lease
from gateway.waiting_room.admin import QueueAdmin, set_admission

log = logging.getLogger("flashgate.schedule")
BATCH = 100
LEASE_MS = 10_000


async def run_due(runtime: Runtime) -> dict[str, list[int]]:
    """Do every scheduled step that is due; returns the event ids per step (empty without the lease)."""
    done: dict[str, list[int]] = {"prequeue": [], "open": [], "close": []}
    me = os.urandom(8).hex()
    lease = schedule_lease(runtime.prefix)
    if not await runtime.redis.set(lease, me, nx=True, px=LEASE_MS):
        return done
    try:
        # Both opening queries also filter on least(...), the expression of the partial index they use.
        pool = await runtime.pg()
        admin = EventAdmin(runtime, queue=QueueAdmin(runtime))
        for row in await pool.fetch(
                """SELECT id, organisation_id FROM events
                   WHERE status = 'draft' AND sale_opens_at IS NOT NULL AND queue_mode
                     AND least(prequeue_opens_at, sale_opens_at) <= now() AND prequeue_opens_at <= now()
                     AND prequeue_opened_at IS NULL
                   ORDER BY prequeue_opens_at LIMIT $1""", BATCH):
            if await _step(set_admission(runtime, organisation_id=row["organisation_id"], event_id=row["id"],
                                         rate_per_s=None, prequeue=True), row["id"], "pre-queue"):
                await pool.execute("UPDATE events SET prequeue_opened_at = now() WHERE id = $1", row["id"])
                done["prequeue"].append(row["id"])
        for row in await pool.fetch(
                """SELECT id, organisation_id FROM events
                   WHERE status = 'draft' AND sale_opens_at IS NOT NULL
                     AND least(prequeue_opens_at, sale_opens_at) <= now() AND sale_opens_at <= now()
                   ORDER BY sale_opens_at LIMIT $1""", BATCH):
            if await _step(admin.change_status(row["organisation_id"], row["id"], "open"), row["id"], "opening"):
                done["open"].append(row["id"])
        for row in await pool.fetch(
                """SELECT id, organisation_id FROM events
                   WHERE status IN ('on_sale', 'paused') AND sale_closes_at IS NOT NULL AND sale_closes_at <= now()
                   ORDER BY sale_closes_at LIMIT $1""", BATCH):
            if await _step(admin.change_status(row["organisation_id"], row["id"], "close"), row["id"], "closing"):
                done["close"].append(row["id"])
    finally:
        # Give the lease back only if it is still ours (a slow round may have lost it).
        await runtime.redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                                 "end return 0", 1, lease, me)
    for step, ids in done.items():
        if ids:
            log.info("scheduled sales", extra={"step": step, "events": ids})
    return done


async def _step(call: Any, event_id: int, what: str) -> bool:
    try:
        await call
        return True
    except DomainError as err:  # changed by hand meanwhile (e.g. opened already): nothing to do
        log.info(f"scheduled {what} skipped", extra={"event_id": event_id, "reason": err.code})
        return err.code == "invalid_state" and what == "pre-queue"
