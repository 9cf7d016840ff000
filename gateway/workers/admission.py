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

from redis.exceptions import NoScriptError

from gateway.core.runtime import Runtime
from gateway.services.queue_admin import advance_args, advance_keys
from gateway.services.waiting_room import qkey
from gateway.store.keys import on_sale_set
from gateway.store.scripts import Scripts, parse_reply

log = logging.getLogger("flashgate.admission")


def leader_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


async def tick(runtime: Runtime, scripts: Scripts, me: str, led: set[int]) -> dict[int, dict]:
    """One round over the active events (one pipeline); returns the replies of the events we lead."""
    settings = runtime.settings
    prefix = settings.redis_prefix
    ids = sorted(int(raw) for raw in await runtime.redis.smembers(on_sale_set(prefix)))
    if not ids:
        return {}
    script = scripts["queue_advance"]
    args = advance_args(settings, me)
    pipe = runtime.redis.pipeline(transaction=False)
    for event_id in ids:
        keys = advance_keys(prefix, event_id)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    raw = await pipe.execute(raise_on_error=False)
    if any(isinstance(r, NoScriptError) for r in raw):  # Redis restarted or flushed: load, retry next tick
        await scripts.load_all()
        return {}
    ours: dict[int, dict] = {}
    for event_id, result in zip(ids, raw):
        if isinstance(result, Exception):
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
    return ours


async def resign(runtime: Runtime, scripts: Scripts, me: str, led: set[int]) -> None:
    for event_id in led:
        await scripts.raw("queue_resign", [qkey(runtime.settings.redis_prefix, event_id, "lease")], [me])


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    scripts = Scripts(runtime.redis)
    await scripts.load_all()
    me = leader_id()
    led: set[int] = set()
    failing = False
    interval = runtime.settings.queue_tick_s
    try:
        while not stop.is_set():
            try:
                await tick(runtime, scripts, me, led)
                failing = False
            except Exception as exc:  # Redis away: keep trying, log once
                if not failing:
                    log.warning("admission tick failed", extra={"error": repr(exc)})
                failing = True
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
    finally:
        try:
            await resign(runtime, scripts, me, led)
        except Exception:
            pass
