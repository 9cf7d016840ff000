"""Waiting room, organiser and leader side: admission rate, pre-queue, figures, one leader tick."""

from __future__ import annotations

import math
import time
from typing import Any

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.services import events
from gateway.services.queue_shuffle import commitment, new_seed
from gateway.services.waiting_room import qkey
from gateway.store.keys import event_key
from gateway.store.scripts import Reply, Scripts

MAX_SCAN = 5000  # places decided per leader call (bounds the script's run time)


def advance_keys(prefix: str, event_id: int) -> list[str]:
    q = [qkey(prefix, event_id, n) for n in ("lease", "state", "seen", "fate", "seed")]
    return q + [event_key(prefix, event_id, n) for n in ("meta", "sold", "held", "holds", "ga")]


def advance_args(settings: Settings, leader: str) -> list[Any]:
    s = settings
    return [leader, s.queue_lease_ms, s.queue_stall_s, s.queue_tickets_per_buyer, s.queue_decision_s,
            s.queue_expiring_window_s, s.queue_max_active_holds, s.queue_max_checkout_ms, MAX_SCAN]


async def advance(*, scripts: Scripts, settings: Settings, event_id: int, leader: str) -> Reply:
    """One leader tick for one event (takes or renews the lease first; `not_leader` when another holds it)."""
    return await scripts.call("queue_advance", advance_keys(settings.redis_prefix, event_id),
                              advance_args(settings, leader))


async def report_checkout_latency(*, redis: Any, prefix: str, event_id: int, ms: float, alpha: float = 0.2) -> None:
    """Feed the checkout latency backpressure (an EWMA kept in the queue state; the leader reads it)."""
    key = qkey(prefix, event_id, "state")
    old = await redis.hget(key, "checkout_ms")
    value = ms if old is None else (1 - alpha) * float(old) + alpha * ms
    await redis.hset(key, "checkout_ms", value)


def _n(raw: Any, default: float = 0.0) -> float:
    try:
        return float(raw) if raw not in (None, b"") else default
    except ValueError:
        return default


async def queue_stats(runtime: Runtime, event_id: int) -> dict[str, Any]:
    """The queue figures of one event: length, admitted, rates (configured, effective, measured), ETA."""
    prefix = runtime.settings.redis_prefix
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.hgetall(qkey(prefix, event_id, "state"))
    pipe.hmget(event_key(prefix, event_id, "meta"), "status", "queue_mode", "admission_rate")
    pipe.get(qkey(prefix, event_id, "lease"))
    state, meta, leader = await pipe.execute()
    g = {k.decode(): v.decode() for k, v in state.items()}
    rate = _n(meta[2])
    seq, upto = int(_n(g.get("seq"))), int(_n(g.get("upto")))
    factor = _n(g.get("factor"), 1.0)
    measured = _n(g.get("mrate"))
    length = max(0, seq - upto)
    basis = measured if measured > 0.05 else rate * factor
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
        "rate": {"configured_per_s": rate, "effective_per_s": rate * factor,
                 "measured_per_s": round(_n(g.get("arate")), 3), "places_per_s": round(measured, 3)},
        "eta_last_s": math.ceil(length / basis) if length and basis > 0 and not g.get("paused") else
        (0 if not length else None),
        "paused": g.get("paused") or None,
        "sold_out": g.get("sold_out") == "1",
        "backpressure": {"factor": factor, "active_holds": int(_n(g.get("holds"))),
                         "max_active_holds": runtime.settings.queue_max_active_holds,
                         "checkout_ms": _n(g.get("checkout_ms")),
                         "max_checkout_ms": runtime.settings.queue_max_checkout_ms},
        "inventory": {"free": int(_n(g.get("free"))), "held": int(_n(g.get("held")))},
        "prequeue": pre,
        "leader": leader.decode() if leader else None,
        "updated_ms": int(_n(g.get("last"))) or None,
        "now_ms": int(time.time() * 1000),
    }


async def set_admission(runtime: Runtime, *, organisation_id: int, event_id: int, rate_per_s: float | None,
                        prequeue: bool | None) -> dict[str, Any]:
    """Change the admission rate and/or open the pre-queue; returns the queue figures."""
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
        scripts: Scripts = runtime.extras["scripts"]
        reply = await scripts.call("queue_prequeue", [qkey(prefix, event_id, "state"), qkey(prefix, event_id, "seed")],
                                   [seed, commitment(seed)])
        if not reply.ok:
            raise DomainError("invalid_state", "The pre-queue opens before the sale; this sale has opened.",
                              details=reply.data)
    room = runtime.extras.get("waiting_room")
    if room is not None:
        await room.event_changed(event_id)
    return await queue_stats(runtime, event_id)
