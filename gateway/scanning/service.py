"""Door scanning, the service: one scan online, offline batches, the manifest, the figures, and
degraded mode (docs/scanning.md).

A scan online: authenticate the device token in-process -> classify the code (signature verified
in-process; a code verified before is found in the `hotpath.RecentSet` of verified codes and not
verified again) -> find the ticket in the worker's registry -> ONE Lua call (`scan_checkin`):
revocation, idempotency, void, first scan wins, re-entry, counters, ledger entry -> answer. Redis
refusing the connection or not answering within the Redis budget (`redis_timeout_s`, measured by
the pipelined connection from the moment the call is written, so a busy worker's own queue never
counts as Redis being slow): the answer comes from this worker alone (degraded.py) and the scan is
queued for replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

import hotpath
from gateway.core.errors import DomainError, store_unavailable
from gateway.core.sealing import Sealer
from gateway.core.tasks import stop_task
from gateway.scanning import manifest as manifests
from gateway.scanning import requests, rules
from gateway.scanning.degraded import LocalDoor
from gateway.scanning.devices import Device, Devices, iso_ms, revoked_error
from gateway.scanning.events import EventCache, EventScan
from gateway.scanning.registry import Ticket
from gateway.scanning.stats import scan_stats
from gateway.store.keys import ledger_dirty_set, scan_keys
from gateway.store.scripts import Scripts

log = logging.getLogger("flashgate.scanning")

SCAN_NS = uuid.UUID("5a0c7c52-93a4-4f57-8f8e-3e2b0f6c9d41")
_SCAN_NS_BYTES = SCAN_NS.bytes
KEEP_EVERY_S = 0.25      # the keeper's tick: probe Redis while degraded, replay the queue
REFRESH_EVERY_S = 1.0    # degraded-mode copies (revoked devices, rules) and ticket catch-up
MARK_DELAY_S = 0.05      # ledger wake-ups are batched this long (always after the XADDs they cover)
VERIFIED_CAPACITY, VERIFIED_TTL_S = 200_000, 3600.0
REDIS_DOWN = (RedisError, TimeoutError, OSError)


def scan_uuid(device_id: str, scan_id: str) -> str:
    """The scan's id in the ledger and Postgres: the same for the same (device, scan id). It is
    `str(uuid.uuid5(SCAN_NS, "<device>|<scan id>"))`, formatted by hand (a UUID object costs more
    than the rest of it)."""
    h = bytearray(hashlib.sha1(_SCAN_NS_BYTES + f"{device_id}|{scan_id}".encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class Scanning:
    """Per-process scanning service (one per gateway worker)."""

    def __init__(self, *, redis: Redis, scripts: Scripts, prefix: str, sealer: Sealer, devices: Devices,
                 journal_dir: Path | None = None) -> None:
        self.redis = redis
        self.scripts = scripts
        self.prefix = prefix
        self.devices = devices
        self.events = EventCache(redis=redis, prefix=prefix, sealer=sealer)
        self.local = LocalDoor(journal_dir)
        self.verified = hotpath.RecentSet(VERIFIED_CAPACITY, VERIFIED_TTL_S)
        self._replaying = asyncio.Lock()
        self._dirty: set[int] = set()
        self._marker: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.local.adopt()
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        """Before the Redis connections close: no task of ours touches Redis after this returns (a
        ledger wake-up still waiting would open a new connection on a closed pool)."""
        if self._keeper is not None:
            await stop_task(self._keeper, name="scan keeper")  # a cancel inside redis-py may be swallowed
            self._keeper = None
        if self._marker is not None:
            await stop_task(self._marker, name="scan ledger wake-up")
            self._marker = None
        try:
            await asyncio.wait_for(self._replay(), 2.0)
            await asyncio.wait_for(self._flush_marks(delay=0), 1.0)
        except (*REDIS_DOWN, asyncio.TimeoutError):
            pass
        self.local.close()

    # -- the device routes ---------------------------------------------------------------------
    async def scan(self, token: str | None, body: Any, queue: str | None = None) -> dict[str, Any]:
        """`POST /v1/scan`: one scan, decided online (or degraded when Redis does not answer)."""
        device = self.devices.authenticate(token)
        req = requests.scan_request(body)
        queue_n = requests.queue_length(queue)
        ev = await self._event(device.event_id, degraded_ok=True)
        verdict = await self._classify(ev, req.code)
        ticket = await self._ticket(ev, verdict)
        sid = req.scan_id or os.urandom(16).hex()
        if not self.local.is_down():
            try:
                if self.local.queue:
                    await self._replay()  # what this worker decided alone goes first
                args = self._args(ev, device, sid, req, verdict, ticket, mode="online", at_ms=None, queue=queue_n)
                reply = await self.scripts.call("scan_checkin", scan_keys(self.prefix, ev.event_id), args)
            except REDIS_DOWN as exc:
                self.local.mark_down(exc)
            else:
                if reply.status == "device_revoked":
                    raise revoked_error(device.device_id)
                self._mark(ev.event_id)
                return self._answer(ev, reply.data, degraded=False)
        return self._degraded(ev, device, sid, req, verdict, ticket)

    async def batch(self, token: str | None, body: Any, queue: str | None = None) -> dict[str, Any]:
        """`POST /v1/scan/batch`: offline scans, decided by scan time; idempotent per (device, scan id)."""
        device = self.devices.authenticate(token)
        req = requests.batch_request(body)
        queue_n = req.queue_length if req.queue_length is not None else requests.queue_length(queue)
        ev = await self._event(device.event_id)
        received = int(time.time() * 1000)
        offset = received - req.sent_at_ms if req.sent_at_ms is not None else 0
        items = []
        for i, scan in enumerate(req.scans):
            verdict = await self._classify(ev, scan.code)
            assert scan.scan_id is not None and scan.scanned_at_ms is not None
            items.append((i, scan, verdict, scan.scanned_at_ms + offset))
        if any(v.kind == "ticket" and v.serial not in ev.registry.tickets for _, _, v, _ in items):
            await self.events.catch_up(ev)
        if self.local.queue:
            await self._replay()
        # In scan-time order; the scans of one ticket one after another (waves), the rest pipelined.
        items.sort(key=lambda item: item[3])
        waves: list[list[tuple[int, list[Any]]]] = []
        seen: dict[int, int] = {}
        for i, scan, verdict, at in items:
            wave = 0
            if verdict.serial is not None and verdict.kind == "ticket":
                wave = seen.get(verdict.serial, -1) + 1
                seen[verdict.serial] = wave
            while len(waves) <= wave:
                waves.append([])
            ticket = ev.registry.tickets.get(verdict.serial) if verdict.kind == "ticket" else None
            waves[wave].append((i, self._args(ev, device, scan.scan_id or "", scan, verdict, ticket, mode="offline",
                                              at_ms=at, queue=queue_n)))
        answers: list[dict[str, Any] | None] = [None] * len(items)
        keys = scan_keys(self.prefix, ev.event_id)
        for wave_items in waves:
            replies = await asyncio.gather(*(self.scripts.call("scan_checkin", keys, args) for _, args in wave_items))
            for (i, _), reply in zip(wave_items, replies):
                if reply.status == "device_revoked":
                    raise revoked_error(device.device_id)
                answers[i] = self._answer(ev, reply.data, degraded=False)
        self._mark(ev.event_id)
        return {"results": answers, "degraded": False}

    async def manifest(self, token: str | None, since: str | None, queue: str | None = None) -> dict[str, Any]:
        """`GET /v1/scan/manifest`: what a device needs offline, in full or since a version."""
        device = self.devices.authenticate(token)
        queue_n = requests.queue_length(queue)
        ev = await self._event(device.event_id)
        await self._contact(ev, device, queue_n)
        await self.events.catch_up(ev)
        await self.events.refresh(ev)
        return await manifests.manifest(redis=self.redis, prefix=self.prefix, ev=ev, device_id=device.device_id,
                                        gate=device.gate, since=requests.since_version(since))

    async def stats(self, event_id: int, names: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The door figures per gate (see gateway/scanning/stats.py)."""
        return await scan_stats(self.redis, self.prefix, event_id, names)

    # -- steps ---------------------------------------------------------------------------------
    async def _event(self, event_id: int, *, degraded_ok: bool = False) -> EventScan:
        known = self.events.peek(event_id)
        if known is not None and (degraded_ok or not self.local.is_down()):
            known.used = time.monotonic()
            return known
        try:
            return await self.events.get(event_id)
        except REDIS_DOWN as exc:
            self.local.mark_down(exc)
            raise store_unavailable() from exc

    async def _contact(self, ev: EventScan, device: Device, queue: int | None) -> None:
        """Revocation check and last contact, for the routes that do not run the check-in script."""
        if await self.redis.sismember(scan_keys(self.prefix, ev.event_id)[0], device.device_id):
            raise revoked_error(device.device_id)
        key = scan_keys(self.prefix, ev.event_id)[1]
        if queue is None:
            prev = await self.redis.hget(key, device.device_id)
            parts = prev.decode().split("|") if prev else []
            queue_text = parts[1] if len(parts) > 2 else ""
        else:
            queue_text = str(queue)
        await self.redis.hset(key, device.device_id, f"{int(time.time() * 1000)}|{queue_text}|{device.gate}")

    async def _classify(self, ev: EventScan, code: str) -> rules.Verdict:
        text = code.strip().upper()
        now = time.monotonic()
        seen = self.verified.contains(text, now)
        verdict = rules.classify(text, ev.event_id, ev.keys, verified=seen)
        if verdict.kind == "wrong_event" and verdict.event_id is not None:
            others = await self.events.other_keys(verdict.event_id) if not self.local.is_down() else None
            if others is not None:
                verdict = rules.classify(text, ev.event_id, ev.keys, others)
                if verdict.kind == "invalid" and not others:
                    verdict = rules.Verdict("invalid", reason="unknown_key")
        elif verdict.kind == "ticket" and not seen:
            self.verified.add(text, now)
        return verdict

    async def _ticket(self, ev: EventScan, verdict: rules.Verdict) -> Ticket | None:
        if verdict.kind != "ticket" or verdict.serial is None:
            return None
        ticket = ev.registry.tickets.get(verdict.serial)
        if ticket is None and not self.local.is_down():
            try:
                await self.events.catch_up(ev)  # sold after this worker last looked
            except REDIS_DOWN as exc:
                self.local.mark_down(exc)
            ticket = ev.registry.tickets.get(verdict.serial)
        return ticket

    def _args(self, ev: EventScan, device: Device, sid: str, req: requests.ScanRequest, verdict: rules.Verdict,
              ticket: Ticket | None, *, mode: str, at_ms: int | None, queue: int | None,
              local_result: str | None = None) -> list[Any]:
        extra = {"reason": verdict.reason, "local_result": local_result or req.local_result,
                 "code_event": verdict.event_id, "serial": verdict.serial}
        return [device.device_id, sid, scan_uuid(device.device_id, sid), device.gate, verdict.kind,
                "" if verdict.serial is None else verdict.serial, ticket.order_id if ticket else "",
                ev.registry.rule_key(ticket) if ticket else "", req.direction, mode,
                "" if at_ms is None else at_ms, "" if queue is None else queue,
                ticket.ticket_id if ticket else "", orjson.dumps(extra).decode()]

    def _answer(self, ev: EventScan, a: dict[str, Any], *, degraded: bool) -> dict[str, Any]:
        """The API answer of a check-in script answer (or of a degraded decision, same fields)."""
        result = a["r"]
        serial = a.get("sn")
        ticket_view = None
        if result == "wrong_event":
            ticket_view = {"ticket_id": None, "event_id": a.get("ce"), "serial": serial, "seat": None,
                           "section": None, "type": None, "holder": None, "voided_at": None}
        elif result != "invalid" and serial is not None:
            ticket = ev.registry.tickets.get(int(serial))
            if ticket is not None:
                voided = a.get("va") or ticket.voided_at_ms
                ticket_view = {"ticket_id": ticket.ticket_id, "event_id": ev.event_id, "serial": ticket.serial,
                               **ev.registry.data(ticket), "voided_at": iso_ms(voided) if voided else None}
            else:
                ticket_view = {"ticket_id": None, "event_id": ev.event_id, "serial": serial, "seat": None,
                               "section": None, "type": None, "holder": None, "voided_at": None}
            self.local.learn(ev.event_id, int(serial), result, _first_of(a))
        first = a.get("f")
        inside = a.get("i")
        return {"scan_id": a["sid"], "result": result, "gate": a["g"], "device_id": a["d"],
                "scanned_at": iso_ms(a["at"]), "scanned_at_ms": a["at"], "ticket": ticket_view,
                "first_scan": None if not first else {"scan_id": first.get("sid"), "gate": first.get("g"),
                                                      "device_id": first.get("d"), "at": iso_ms(first.get("a")),
                                                      "at_ms": first.get("a")},
                "reentry": bool(a.get("re")), "inside": None if inside is None else bool(inside),
                "reason": a.get("rs"), "conflict": bool(a.get("c")), "degraded": degraded,
                "replay": bool(a.get("replay"))}

    # -- degraded mode -------------------------------------------------------------------------
    def _degraded(self, ev: EventScan, device: Device, sid: str, req: requests.ScanRequest,
                  verdict: rules.Verdict, ticket: Ticket | None) -> dict[str, Any]:
        if device.device_id in ev.revoked:
            raise revoked_error(device.device_id)
        now = int(time.time() * 1000)
        a: dict[str, Any] = {"sid": sid, "g": device.gate, "d": device.device_id, "at": now, "sn": verdict.serial,
                             "ce": verdict.event_id, "rs": verdict.reason}
        if verdict.kind != "ticket":
            a["r"] = verdict.kind
        elif ticket is not None and ticket.voided_at_ms is not None:
            a["r"], a["va"] = "void", ticket.voided_at_ms
        else:
            reentry = ticket is not None and ev.registry.rule_key(ticket) in ev.rules
            scan = {"s": scan_uuid(device.device_id, sid), "sid": sid, "g": device.gate, "d": device.device_id,
                    "a": now}
            assert verdict.serial is not None
            result, first, inside = self.local.decide(ev.event_id, verdict.serial, req.direction, reentry, scan)
            a.update(r=result, f=first, i=int(inside), re=reentry)
        args = self._args(ev, device, sid, req, verdict, ticket, mode="degraded", at_ms=now, queue=None,
                          local_result=a["r"])
        self.local.enqueue({"event_id": ev.event_id, "args": args})
        answer = self._answer(ev, {**a, "f": a.get("f")}, degraded=True)
        return answer

    async def _replay(self) -> int:
        """Replay the scans decided without Redis, in order; returns how many."""
        if not self.local.queue:
            return 0
        async with self._replaying:
            n = 0
            while self.local.queue:
                item = self.local.queue[0]
                event_id = int(item["event_id"])
                reply = await self.scripts.call("scan_checkin", scan_keys(self.prefix, event_id), item["args"])
                if reply.status != "ok":
                    log.warning("degraded scan refused at replay", extra={"status": reply.status,
                                                                          "event_id": event_id})
                elif reply.data.get("c"):
                    log.info("degraded scan was a conflict at replay", extra={"event_id": event_id,
                                                                              "result": reply.data.get("r")})
                self.local.queue.popleft()
                self._mark(event_id)
                n += 1
            self.local.done()
            if n:
                log.info("degraded scans replayed", extra={"scans": n})
            return n

    async def _keep(self) -> None:
        """Probe Redis while degraded and replay; keep the degraded-mode copies fresh."""
        last_refresh = 0.0
        while True:
            await asyncio.sleep(KEEP_EVERY_S)
            try:
                if self.local.queue or self.local.is_down():
                    await self.redis.ping()
                    self.local.mark_up()
                    await self._replay()
                now = time.monotonic()
                if now - last_refresh >= REFRESH_EVERY_S:
                    last_refresh = now
                    for ev in self.events.active():
                        await self.events.refresh(ev)
                        await self.events.catch_up(ev)
            except REDIS_DOWN as exc:
                self.local.mark_down(exc)
            except Exception:  # the keeper must outlive any surprise
                log.exception("scanning keeper error")

    # -- ledger wake-ups -----------------------------------------------------------------------
    def _mark(self, event_id: int) -> None:
        """Wake the ledger worker for this event, after the XADD (batched; see workers/ledger.py)."""
        self._dirty.add(event_id)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.get_running_loop().create_task(self._flush_marks())

    async def _flush_marks(self, delay: float = MARK_DELAY_S) -> None:
        while self._dirty:
            await asyncio.sleep(delay)
            ids, self._dirty = self._dirty, set()
            try:
                await self.redis.sadd(ledger_dirty_set(self.prefix), *ids)
            except BaseException as exc:  # not sent (or cancelled at stop): still to do
                self._dirty |= ids
                if not isinstance(exc, RedisError):
                    raise
                delay = 0.5


def _first_of(a: dict[str, Any]) -> dict[str, Any] | None:
    if a.get("r") == "admitted":
        return {"s": a.get("id"), "sid": a.get("sid"), "g": a.get("g"), "d": a.get("d"), "a": a.get("at")}
    return a.get("f")
