"""Degraded mode: scanning on one gateway worker while Redis is unreachable (docs/scanning.md).

The worker still verifies signatures (the event's keys are in memory) and knows the tickets and
voids it folded last. Duplicates are caught by a local seen-set (`hotpath.RecentSet`, fed by every
answer this worker gave, online ones included), so a ticket scanned twice through this worker is
refused; a ticket first admitted through another worker during the outage is caught at replay.
Every degraded scan is queued in memory and appended to a journal file (`<data dir>/scan-journal/`),
and replayed through the check-in script (mode `degraded`, at its scan time, so the earliest scan
wins) as soon as Redis answers again, before this worker decides anything new online. A journal
left by a worker that died is adopted by the next one that starts.

Costs: RecentSet ~60 B per ticket admitted on this worker; the queue one dict per degraded scan;
one journal line written per degraded scan (flushed, not fsynced: a process crash keeps it, a power
loss may not).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

import hotpath

log = logging.getLogger("flashgate.scanning")

SEEN_CAPACITY = 500_000
SEEN_TTL_S = 24 * 3600.0
FIRST_MAX = 200_000
DOWN_FOR_S = 1.0  # after a failure, scans skip Redis this long (the keeper probes and ends it earlier)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalDoor:
    """The local seen-set, the replay queue and its journal (one per worker process)."""

    def __init__(self, journal_dir: Path | None) -> None:
        self.seen = hotpath.RecentSet(SEEN_CAPACITY, SEEN_TTL_S)  # "<event>:<serial>" let in on this worker
        self.first: dict[str, dict[str, Any]] = {}                 # same key -> the scan that let it in
        self.outside: set[str] = set()                             # same key, scanned out since
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.down_until = 0.0
        self.down = False  # for the log: one line when scanning goes degraded, one when it is back
        self.journal_dir = journal_dir
        self._journal: Any = None
        self._adopted: list[Path] = []

    # -- Redis health ------------------------------------------------------------------------
    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def mark_down(self, exc: BaseException | None = None) -> None:
        if not self.down:
            log.warning("Redis unavailable: scanning degraded", extra={"error": repr(exc)})
        self.down = True
        self.down_until = time.monotonic() + DOWN_FOR_S

    def mark_up(self) -> None:
        if self.down:
            log.info("Redis answers again: scanning online")
        self.down = False
        self.down_until = 0.0

    # -- the seen-set ------------------------------------------------------------------------
    def learn(self, event_id: int, serial: int, result: str, first: dict[str, Any] | None) -> None:
        """Remember what an answer (online or degraded) says about a ticket."""
        key = f"{event_id}:{serial}"
        now = time.monotonic()
        if result in ("admitted", "duplicate"):
            self.seen.add(key, now)
            if first is not None:
                if len(self.first) >= FIRST_MAX:
                    self.first.clear()
                self.first[key] = first
            if result == "admitted":
                self.outside.discard(key)
        elif result == "exited":
            self.outside.add(key)

    def decide(self, event_id: int, serial: int, direction: str, reentry: bool,
               scan: dict[str, Any]) -> tuple[str, dict[str, Any] | None, bool]:
        """(result, first scan, inside) from local knowledge only."""
        key = f"{event_id}:{serial}"
        now = time.monotonic()
        inside = self.seen.contains(key, now) and key not in self.outside
        if direction == "out":
            if inside:
                self.outside.add(key)
                return "exited", None, False
            return "not_inside", None, False
        if self.seen.contains(key, now) and not (reentry and key in self.outside):
            return "duplicate", self.first.get(key), inside
        self.learn(event_id, serial, "admitted", scan)
        return "admitted", None, True

    # -- the queue and its journal -----------------------------------------------------------
    def enqueue(self, item: dict[str, Any]) -> None:
        self.queue.append(item)
        journal = self._open()
        if journal is not None:
            try:
                journal.write(orjson.dumps(item) + b"\n")
                journal.flush()
            except OSError as exc:
                log.warning("scan journal not written", extra={"error": repr(exc)})

    def done(self) -> None:
        """The queue was replayed completely: empty the journal and drop adopted ones."""
        if self.queue:
            return
        if self._journal is not None:
            try:
                self._journal.truncate(0)
                self._journal.seek(0)
            except OSError:
                pass
        for path in self._adopted:
            path.unlink(missing_ok=True)
        self._adopted.clear()

    def adopt(self) -> int:
        """Queue the scans of journals whose worker is gone (called once when the worker starts)."""
        if self.journal_dir is None or not self.journal_dir.is_dir():
            return 0
        n = 0
        for path in sorted(self.journal_dir.glob("*.jsonl")):
            # worker-<pid>.jsonl, or adopted-<pid of the adopter>-<original name> (the adopter died too)
            try:
                pid = int(path.stem.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or _alive(pid):
                continue
            try:
                original = path.name.split("-", 2)[2] if path.name.startswith("adopted-") else path.name
                claimed = path.with_name(f"adopted-{os.getpid()}-{original}")
                path.rename(claimed)  # atomic: one worker adopts a journal
            except OSError:
                continue
            for line in claimed.read_bytes().splitlines():
                try:
                    self.queue.append(orjson.loads(line))
                    n += 1
                except orjson.JSONDecodeError:
                    pass  # a line cut by the crash
            self._adopted.append(claimed)
        if n:
            log.warning("adopted degraded scans of a worker that died", extra={"scans": n})
        return n

    def _open(self) -> Any:
        if self._journal is None and self.journal_dir is not None:
            try:
                self.journal_dir.mkdir(parents=True, exist_ok=True)
                self._journal = open(self.journal_dir / f"worker-{os.getpid()}.jsonl", "ab+")  # noqa: SIM115
            except OSError as exc:
                log.warning("scan journal unavailable", extra={"error": repr(exc)})
                self.journal_dir = None
        return self._journal

    def close(self) -> None:
        if self._journal is not None:
            empty = not self.queue
            name = self._journal.name
            self._journal.close()
            self._journal = None
            if empty:
                Path(name).unlink(missing_ok=True)
