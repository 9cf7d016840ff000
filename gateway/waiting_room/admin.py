"""Waiting room, organiser side: admission rate, pre-queue, queue figures, and the
checkout latency that feeds the admission leader's backpressure."""

from __future__ import annotations

import math
import time
from typing import Any

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.organisers import events
from gateway.store.keys import event_key, freeze_keys, qkey
from gateway.waiting_room import waitlist
from gateway.waiting_room.cache import eta_rate
from gateway.waiting_room.cache import QueueCache
from gateway.waiting_room.shuffle import commitment, new_seed

MAX_SCAN = 5000  # places decided per leader call (bounds the script's run time)


def advance_args(settings: Settings, leader: str) -> list[Any]:
    s = settings
    return [leader, s.queue_lease_ms, s.queue_stall_s, s.queue_tickets_per_buyer, s.queue_decision_s,
            s.queue_expiring_window_s, s.queue_max_active_holds, s.queue_max_checkout_ms, MAX_SCAN,
            s.queue_admission_ttl_s, s.queue_poll_after_s, s.queue_tickets_prior_n, s.queue_checkout_target_ms]


def _n(raw: Any, default: float = 0.0) -> float:
    try:
        return float(raw) if raw not in (None, b"") else default
    except ValueError:
        return default


class QueueAdmin:
    def __init__(self, runtime: Runtime, cache: QueueCache | None = None) -> None:
        self.runtime = runtime
        self.cache = cache  # this worker's queue cache, refreshed at once after a change

    async def stats(self, event_id: int) -> dict[str, Any]:
        return await queue_stats(self.runtime, event_id)

    async def set_admission(self, *, organisation_id: int, event_id: int, rate_per_s: float | None,
                            prequeue: bool | None) -> dict[str, Any]:
        """Change the admission rate and/or open the pre-queue; returns the queue figures."""
        await set_admission(self.runtime, organisation_id=organisation_id, event_id=event_id,
                            rate_per_s=rate_per_s, prequeue=prequeue)
        await self.event_changed(event_id)
        return await self.stats(event_id)

    async def event_changed(self, event_id: int) -> None:
        """An organiser changed the event (status, rate, pre-queue): freeze the pre-queue order if the
        sale opened, and refresh this worker's copy at once."""
        await self.runtime.scripts.raw("queue_freeze", freeze_keys(self.runtime.prefix, event_id), [])
        if self.cache is not None:
            await self.cache.forget_mode(event_id)


async def queue_stats(runtime: Runtime, event_id: int) -> dict[str, Any]:
    """The queue figures of one event: length, admitted, rates (configured, effective, measured), ETA."""
    prefix = runtime.settings.redis_prefix
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.hgetall(qkey(prefix, event_id, "state"))
    pipe.hmget(event_key(prefix, event_id, "meta"), "status", "queue_mode", "admission_rate")
    pipe.get(qkey(prefix, event_id, "lease"))
    waitlist.queue_waitlist_reads(pipe, prefix, event_id)
    state, meta, leader, *wl = await pipe.execute()
    g = {k.decode(): v.decode() for k, v in state.items()}
    rate = _n(meta[2])
    seq, upto = int(_n(g.get("seq"))), int(_n(g.get("upto")))
    factor = _n(g.get("factor"), 1.0)
    measured = _n(g.get("mrate"))
    length = max(0, seq - upto)
    basis = eta_rate(measured, _n(g.get("frate"), -1.0), rate * factor)
    opened = "opened" in g
    pre: dict[str, Any] = {"size": int(_n(g.get("pre"))) if opened else seq if g.get("prequeue") else 0,
                           "commitment": g.get("commitment")}
    if opened:
        pre["seed"] = g.get("seed") or None
        pre["opened_at"] = int(_n(g.get("opened")))
    return {
        "enabled": (meta[1] or b"") == b"1" or g.get("prequeue") == "1",
        "phase": "open" if opened else "prequeue" if g.get("prequeue") == "1" else "closed",
        "joined": seq,
        "length": length,
        "admitted_up_to": upto,
        "admitted": int(_n(g.get("admitted"))),
        "lost_stalled": int(_n(g.get("skipped"))),
        "rate": {"configured_per_s": rate,
                 "effective_per_s": min(rate * factor, _n(g.get("ccap"), math.inf)),
                 "measured_per_s": round(_n(g.get("arate")), 3), "places_per_s": round(measured, 3)},
        "eta_last_s": math.ceil(length / basis) if length and basis > 0 and not g.get("paused") else
        (0 if not length else None),
        "paused": g.get("paused") or None,
        "sold_out": g.get("sold_out") == "1",
        "backpressure": {"factor": factor, "active_holds": int(_n(g.get("holds"))),
                         "max_active_holds": runtime.settings.queue_max_active_holds,
                         "checkout_ms": _n(g.get("checkout_ms")),
                         "max_checkout_ms": runtime.settings.queue_max_checkout_ms,
                         "checkout_target_ms": runtime.settings.queue_checkout_target_ms,
                         "sales_per_s": round(_n(g.get("srate")), 3),
                         "checkout_cap_per_s": round(_n(g.get("ccap")), 3) if g.get("ccap") else None},
        "inventory": {"free": int(_n(g.get("free"))), "held": int(_n(g.get("held"))),
                      "expiring": round(_n(g.get("expiring")), 1)},
        "demand": {"tickets_per_buyer": round(_n(g.get("tpb"), runtime.settings.queue_tickets_per_buyer), 3),
                   "acted_buyers": int(_n(g.get("acted"))), "tickets_taken": int(_n(g.get("taken"))),
                   "pending_buyers": int(_n(g.get("pending"))),
                   "reaction_s": round(_n(g.get("react")), 3) if g.get("react") else None,
                   "pending_window_s": round(_n(g.get("pwin"), runtime.settings.queue_decision_s), 3),
                   "holds_returned": round(_n(g.get("ret"), 1.0), 3),
                   "budget": int(_n(g.get("budget")))},
        "prequeue": pre,
        "waitlist": waitlist.figures(*wl),
        "leader": leader.decode() if leader else None,
        "updated_ms": int(_n(g.get("last"))) or None,
        "now_ms": int(time.time() * 1000),
    }


async def set_admission(runtime: Runtime, *, organisation_id: int, event_id: int, rate_per_s: float | None,
                        prequeue: bool | None) -> None:
    pool = await runtime.pg()
    event = await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)
    if not event["queue"]["enabled"]:
        raise DomainError("invalid_state", "This event has no waiting room (queue mode is off).",
                          details={"event_id": event_id})
    if event["status"] == "closed":
        raise DomainError("invalid_state", "A closed event cannot change its admission.",
                          details={"status": "closed"})
    prefix = runtime.settings.redis_prefix
    if rate_per_s is not None:
        await pool.execute("UPDATE events SET admission_rate = $2 WHERE id = $1", event_id, rate_per_s)
        meta = event_key(prefix, event_id, "meta")
        if await runtime.redis.exists(meta):
            await runtime.redis.hset(meta, "admission_rate", rate_per_s)
    if prequeue:
        if event["status"] != "draft":
            raise DomainError("invalid_state", "The pre-queue opens before the sale; this sale has opened.",
                              details={"status": event["status"]})
        seed = new_seed()
        reply = await runtime.scripts.call("queue_prequeue", freeze_keys(prefix, event_id)[1:],
                                           [seed, commitment(seed)])
        if not reply.ok:
            raise DomainError("invalid_state", "The pre-queue opens before the sale; this sale has opened.",
                              details=reply.data)
