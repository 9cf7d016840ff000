"""Admission leader: advances "admitted up to place" of every event with a waiting room.

Any number of these workers may run. For each event, the one holding the event's
lease (a Redis key with expiry, taken with SET NX PX and renewed by the same
script that advances the counter) does the work; the others find `not_leader`
and try again next tick, so a dead leader is replaced within the lease time
(`queue_lease_ms`, 2 s by default). A clean stop gives the leases back at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from gateway.core.runtime import Runtime
from gateway.orders import notify
from gateway.store.keys import advance_keys, event_key, on_sale_set, qkey
from gateway.store.scripts import parse_reply
from gateway.waiting_room.admin import advance_args
from gateway.waiting_room import waitlist
from gateway.workers.loop import every

log = logging.getLogger("flashgate.admission")


def leader_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


async def tick(runtime: Runtime, me: str, led: set[int]) -> dict[int, dict]:
    """One round over the active events (their calls leave as one pipeline: they are made in the same
    event-loop tick); returns the replies of the events we lead."""
    settings = runtime.settings
    prefix = settings.redis_prefix
    ids = sorted(int(raw) for raw in await runtime.redis.smembers(on_sale_set(prefix)))
    if not ids:
        return {}
    args = advance_args(settings, me)
    raw = await asyncio.gather(*(runtime.scripts.raw("queue_advance", advance_keys(prefix, event_id), args)
                                 for event_id in ids), return_exceptions=True)
    ours: dict[int, dict] = {}
    for event_id, result in zip(ids, raw):
        if isinstance(result, BaseException):
            log.warning("admission tick failed for an event", extra={"event_id": event_id, "error": repr(result)})
            continue
        reply = parse_reply(result)
        if reply.ok:
            if event_id not in led:
                led.add(event_id)
                log.info("leading admission", extra={"event_id": event_id, "leader": me})
            if not reply.data.get("idle"):
                ours[event_id] = reply.data
        elif event_id in led:
            led.discard(event_id)
            log.info("lost admission lead", extra={"event_id": event_id, "leader": reply.data.get("leader")})
    sold_out = [event_id for event_id, data in ours.items() if data.get("sold_out")]
    if sold_out:
        await waitlist_round(runtime, sold_out)
    return ours


async def waitlist_round(runtime: Runtime, event_ids: list[int]) -> None:
    """The waiting lists of the finally sold-out events we lead: lapsed offers pass on, returned tickets
    are offered (gateway/waiting_room/waitlist.py), and buyers who left an e-mail hear of their offer."""
    results = await asyncio.gather(*(waitlist.step(runtime.scripts, runtime.settings, event_id)
                                     for event_id in event_ids), return_exceptions=True)
    for event_id, result in zip(event_ids, results):
        if isinstance(result, BaseException):
            log.warning("waiting list step failed", extra={"event_id": event_id, "error": repr(result)})
            continue
        for offer in result.get("mail", []):
            try:
                name = (await runtime.redis.hget(event_key(runtime.settings.redis_prefix, event_id, "info"), "name")
                        or b"the event").decode()
                await notify.enqueue(runtime, kind="email", payload=waitlist.offer_email(
                    to=offer["to"], event_id=event_id, event_name=name, count=offer["count"],
                    deadline_ms=offer["deadline_ms"]))
            except Exception as exc:  # the offer stands; the buyer also sees it by polling
                log.warning("waiting list offer e-mail not queued", extra={"event_id": event_id, "error": repr(exc)})


async def resign(runtime: Runtime, me: str, led: set[int]) -> None:
    for event_id in led:
        await runtime.scripts.raw("queue_resign", [qkey(runtime.settings.redis_prefix, event_id, "lease")], [me])


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    me = leader_id()
    led: set[int] = set()
    try:
        await every(runtime.settings.queue_tick_s, stop, lambda: tick(runtime, me, led), log=log,
                    what="admission tick")
    finally:
        try:
            await resign(runtime, me, led)
        except Exception:
            pass
