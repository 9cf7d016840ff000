"""The door logic, apart from any screen: online or offline, the local queue, the sync.

`Scanner.scan(code)` answers every scan at once. Online it asks the gateway
(`POST /v1/scan`). When the gateway cannot be reached it switches to offline by
itself and answers from the manifest: the signature with the event's public
key, the revocation list, the ticket's sealed seat and holder, and its own
seen-set; the scan goes into the SQLite queue. `Scanner.tick()` (called every
second or so from a background thread) probes the gateway while offline,
refreshes the manifest, uploads the queue when the gateway is back
(`POST /v1/scan/batch`) and returns what the gateway decided for each queued
scan, so the screen can show where an offline answer was overruled (a ticket
let in here that another gate let in earlier is a duplicate after all).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from scanner_app import rules
from scanner_app.client import BadRequest, GatewayClient, Refused, Unreachable
from scanner_app.codes import normalise
from scanner_app.manifest import Manifest, TicketInfo
from scanner_app.store import QueuedScan, Store

ONLINE, DEGRADED, OFFLINE = "online", "degraded", "offline"
REFUSED = "refused"
BATCH_SIZE = 500  # the contract's maximum per upload


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NoManifest(RuntimeError):
    """Offline and no manifest stored yet: the device has never reached its gateway."""


@dataclass(slots=True)
class Outcome:
    """One answer at the door."""

    result: str                       # a result word of the contract, or "refused" (device revoked)
    mode: str                         # online, degraded (gateway without Redis), offline
    seat: str | None = None           # seat label, or the general-admission type
    holder: str | None = None
    serial: int | None = None
    first_scan: dict[str, Any] | None = None  # duplicate: when and at which gate the first scan happened
    reason: str | None = None
    queued: bool = False              # decided on this device, waiting for the gateway
    scan_id: str | None = None


@dataclass(slots=True)
class Reconciled:
    """A queued scan after upload: the local answer and the gateway's, which is final."""

    scan_id: str
    serial: int | None
    seat: str | None
    local: str
    server: str
    first_scan: dict[str, Any] | None = None
    conflict: bool = False

    @property
    def overruled(self) -> bool:
        return self.local != self.server


@dataclass(slots=True)
class Counts:
    by_result: dict[str, int] = field(default_factory=dict)

    def add(self, result: str) -> None:
        self.by_result[result] = self.by_result.get(result, 0) + 1

    def move(self, old: str, new: str) -> None:
        if old != new and self.by_result.get(old, 0) > 0:
            self.by_result[old] -= 1
            self.add(new)

    def __getitem__(self, result: str) -> int:
        return self.by_result.get(result, 0)


def place(info: TicketInfo | dict[str, Any] | None) -> str | None:
    """What the door shows as "where": the seat label, else the general-admission type."""
    if info is None:
        return None
    get = info.get if isinstance(info, dict) else lambda k: getattr(info, k, None)
    return get("seat") or (f"GA {get('type')}" if get("type") else None)


class Scanner:
    def __init__(self, *, client: GatewayClient, store: Store, retry_s: float = 2.0, refresh_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], str] = utc_now) -> None:
        self.client, self.store = client, store
        self.retry_s, self.refresh_s = retry_s, refresh_s
        self._clock, self._now = clock, now
        # Two locks, so that the background never makes a scan wait on the network: `_lock` guards the
        # device's state (mode, manifest, counts, the seen-set check and the queue) and is never held
        # across a network call; `_sync_lock` is held by an upload, and a scan waits for an upload in
        # flight (the gateway must know this device's offline admissions before it answers a new scan).
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self.mode = OFFLINE
        self.manifest: Manifest | None = None
        self.counts = Counts()
        self.last_error: str | None = None
        self.revoked = False
        self._next_probe = self._next_refresh = self._next_sync = 0.0

    # -- start and manifest --------------------------------------------------------------------------

    def start(self) -> Manifest:
        """Fetch the manifest, or fall back to the stored one. NoManifest when neither exists;
        Refused when the gateway refuses this device; BadRequest e.g. for an event not on sale."""
        with self._lock:
            stored = self.store.load_manifest()
            if stored is not None:
                self.manifest = Manifest.parse(stored)
            refusal = self.store.refusal()
            if refusal is not None:  # refused once: restarting without the network lets nobody in
                self.revoked, self.last_error = True, refusal
            try:
                self._refresh(full=True)
                self.mode = ONLINE
            except Unreachable as exc:
                if self.manifest is None:
                    raise NoManifest(f"cannot reach the gateway ({exc}) and no manifest is stored yet") from None
                self._offline(str(exc))
            assert self.manifest is not None
            return self.manifest

    def _refresh(self, *, full: bool = False) -> None:
        since = None if full or self.manifest is None else self.manifest.version
        self._apply(self.client.manifest(since, queue=self.store.pending_count()), since)

    def _apply(self, body: dict[str, Any], since: int | None) -> None:
        before = self.manifest
        full = before is None or since is None or bool(body.get("full", True)) \
            or body.get("event_id") != before.event_id
        self.manifest = Manifest.parse(body) if full or before is None else before.merge(body)
        if full or before is None or self.manifest.version != since:
            self.store.save_manifest(body, full=full)  # a refresh writes only what changed
        self._next_refresh = self._clock() + self.refresh_s

    def _offline(self, why: str) -> None:
        self.mode = OFFLINE
        if not self.revoked:  # the refusal stays the message that matters
            self.last_error = why
        self._next_probe = self._clock() + self.retry_s

    def _refused(self, exc: Refused) -> None:
        self.revoked, self.last_error = True, f"{exc} ({exc.code})"
        if exc.code == "device_revoked":  # final; a bad token at start is only a typing error
            self.store.refuse(self.last_error)

    @property
    def waiting(self) -> int:
        return self.store.pending_count()

    # -- scanning ------------------------------------------------------------------------------------

    def scan(self, code: str, *, direction: str = "in") -> Outcome:
        """The answer for one scanned code (call from one thread; `tick` runs in another)."""
        outcome = self._scan(normalise(code), direction)
        with self._lock:
            self.counts.add(outcome.result)
        return outcome

    def _scan(self, code: str, direction: str) -> Outcome:
        if self.revoked:
            return Outcome(REFUSED, self.mode, reason=self.last_error or "this device was revoked")
        if self.mode != OFFLINE:
            if self.store.pending_count() and self._clock() >= self._next_sync:
                self._sync_quietly()  # the gateway learns this device's offline admissions first
            if self.mode != OFFLINE:
                try:
                    return self._scan_online(code, direction)
                except Unreachable as exc:
                    with self._lock:
                        self._offline(str(exc))
                except Refused as exc:
                    self._refused(exc)
                    return Outcome(REFUSED, self.mode, reason=self.last_error)
        with self._lock:  # the seen-set check and the queue entry of one scan are one step
            return self._scan_offline(code, direction)

    def _scan_online(self, code: str, direction: str) -> Outcome:
        scan_id = uuid.uuid4().hex
        body: dict[str, Any] = {"code": code, "scan_id": scan_id, "scanned_at": self._now()}
        if direction != "in":
            body["direction"] = direction
        try:
            answer = self.client.scan(body, queue=self.store.pending_count())
        except BadRequest as exc:  # e.g. a code longer than the gateway takes: not a ticket
            return Outcome(rules.INVALID, self.mode, reason=str(exc), scan_id=scan_id)
        self.mode = DEGRADED if answer.get("degraded") else ONLINE
        self.last_error = None
        ticket = answer.get("ticket") or {}
        serial = ticket.get("serial")
        result = str(answer.get("result", rules.INVALID))
        first = answer.get("first_scan")
        if serial is not None and self.manifest is not None and answer.get("inside") is not None \
                and ticket.get("event_id", self.manifest.event_id) == self.manifest.event_id:
            # Remember what the gateway knows, so this device answers the same if it goes offline.
            self.store.mark_seen(self.manifest.event_id, int(serial), inside=bool(answer["inside"]),
                                 at=(first or {}).get("at") or answer.get("scanned_at") or self._now(),
                                 gate=(first or {}).get("gate") or answer.get("gate"))
        return Outcome(result, self.mode, seat=place(ticket), holder=ticket.get("holder"), serial=serial,
                       first_scan=first, reason=answer.get("reason"), scan_id=scan_id)

    def _scan_offline(self, code: str, direction: str) -> Outcome:
        manifest = self.manifest
        if manifest is None:
            raise NoManifest("no manifest: start() first")
        event_id = manifest.event_id

        def seen(serial: int) -> bool | None:
            row = self.store.seen(event_id, serial)
            return None if row is None else row[0]

        verdict = rules.decide(code, manifest=manifest, seen=seen, direction=direction)
        claims, info = verdict.claims, verdict.info
        serial = claims.serial if claims else None
        first = None
        if verdict.result == rules.DUPLICATE and serial is not None:
            row = self.store.seen(event_id, serial)
            first = {"at": row[1], "gate": row[2]} if row else None
        outcome = Outcome(verdict.result, OFFLINE, seat=place(info), holder=info.holder if info else None,
                          serial=serial, first_scan=first, reason=verdict.reason)
        if claims is None or verdict.result in (rules.INVALID, rules.WRONG_EVENT):
            return outcome  # not a ticket of this event: nothing for the gateway to decide
        scanned_at = self._now()
        outcome.scan_id, outcome.queued = uuid.uuid4().hex, True
        self.store.enqueue(QueuedScan(outcome.scan_id, code, scanned_at, direction, verdict.result, outcome.seat))
        if verdict.result == rules.ADMITTED:
            self.store.mark_seen(event_id, claims.serial, at=scanned_at, gate=manifest.gate)
        elif verdict.result == rules.EXITED:
            self.store.mark_seen(event_id, claims.serial, at=scanned_at, gate=manifest.gate, inside=False)
        return outcome

    # -- background work -----------------------------------------------------------------------------

    def tick(self) -> list[Reconciled]:
        """Probe while offline, refresh the manifest now and then, upload the queue; what the gateway decided.

        The network calls run outside the state lock: a slow or black-holed network never delays a scan."""
        if self.revoked:
            return []
        now = self._clock()
        with self._lock:
            offline = self.mode == OFFLINE
            due = now >= (self._next_probe if offline else self._next_refresh)
            since = None if self.manifest is None else self.manifest.version
        if due:
            try:
                body = self.client.manifest(since, queue=self.store.pending_count())
            except Unreachable as exc:
                with self._lock:
                    if not exc.alive:
                        self._offline(str(exc))
                        return []
                    # The gateway runs without Redis: it answers scans degraded and keeps them; the device
                    # keeps its manifest and its queue waits.
                    self._next_refresh = now + self.retry_s
                    if offline:
                        self.mode, self.last_error = ONLINE, str(exc)
            except Refused as exc:
                self._refused(exc)
                return []
            else:
                with self._lock:
                    self._apply(body, since)
                    if offline:
                        self.mode, self.last_error = ONLINE, None
        if self.mode == OFFLINE or now < self._next_sync or not self.store.pending_count():
            return []
        return self._sync_quietly()

    def _sync_quietly(self) -> list[Reconciled]:
        try:
            return self.sync()
        except Unreachable as exc:
            with self._lock:
                self._next_sync = self._clock() + self.retry_s
                if not exc.alive:
                    self._offline(str(exc))
            return []
        except Refused as exc:
            self._refused(exc)
            return []

    def sync(self) -> list[Reconciled]:
        """Upload the queue in batches (idempotent per scan id); raises Unreachable if the gateway goes away."""
        done: list[Reconciled] = []
        size = BATCH_SIZE
        with self._sync_lock:
            while True:
                batch = self.store.pending(size)
                if not batch:
                    return done
                remaining = self.store.pending_count() - len(batch)
                try:
                    answer = self.client.batch([
                        {"scan_id": s.scan_id, "code": s.code, "scanned_at": s.scanned_at, "direction": s.direction,
                         "local_result": s.local_result} for s in batch], sent_at=self._now(), queue=remaining)
                except BadRequest as exc:
                    if size > 1:
                        size = 1  # one scan the gateway will not take must not hold back the others
                        continue
                    scan = batch[0]  # refused for good: recorded as the gateway's refusal, never resent
                    self.store.settle(scan.scan_id, rules.INVALID, {"error": str(exc)}, self._now())
                    with self._lock:
                        self.counts.move(scan.local_result, rules.INVALID)
                    done.append(Reconciled(scan.scan_id, None, scan.seat, scan.local_result, rules.INVALID))
                    continue
                if answer.get("degraded"):
                    self.mode = DEGRADED
                results = answer.get("results") or []
                now = self._now()
                settled = 0
                for scan, result in zip(batch, results):
                    if not isinstance(result, dict) or result.get("scan_id", scan.scan_id) != scan.scan_id:
                        continue  # not this scan's answer: it stays queued for the next round
                    server = str(result.get("result", rules.INVALID))
                    self.store.settle(scan.scan_id, server, result, now)
                    with self._lock:
                        self.counts.move(scan.local_result, server)
                    settled += 1
                    done.append(Reconciled(scan.scan_id, (result.get("ticket") or {}).get("serial"), scan.seat,
                                           scan.local_result, server, result.get("first_scan"),
                                           bool(result.get("conflict"))))
                if not settled:
                    self._next_sync = self._clock() + self.retry_s
                    return done  # the gateway answered nothing we can match: try again later
