"""The device's own memory, in one SQLite file: the last manifest, the seen-set, the scan queue.

It survives a restart of the client, so a device that is switched off and on
again while the network is down still knows which tickets it has let in and
which scans still wait for the gateway.

Tables:
- `meta`: key/value JSON (the manifest's head: event, gate, version, keys, rules);
- `tickets`, `revoked`: the manifest's sealed ticket entries and revoked serials, written as
  the changes arrive (`?since=`), so a refresh of a 100,000-ticket manifest writes only what
  changed;
- `seen`: one row per ticket this device admitted (or heard the gateway admit);
- `queue`: every scan decided offline, with the local answer, and the gateway's
  answer once uploaded (`server_result` NULL = still waiting).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    event_id INTEGER NOT NULL, serial INTEGER NOT NULL, inside INTEGER NOT NULL DEFAULT 1,
    first_at TEXT NOT NULL, gate TEXT, PRIMARY KEY (event_id, serial));
CREATE TABLE IF NOT EXISTS queue (
    scan_id TEXT PRIMARY KEY, code TEXT NOT NULL, scanned_at TEXT NOT NULL, direction TEXT NOT NULL,
    local_result TEXT NOT NULL, seat TEXT, server_result TEXT, server_answer TEXT, uploaded_at TEXT);
CREATE INDEX IF NOT EXISTS queue_pending ON queue (server_result);
CREATE TABLE IF NOT EXISTS tickets (serial INTEGER PRIMARY KEY, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (serial INTEGER PRIMARY KEY);
"""


@dataclass(frozen=True, slots=True)
class QueuedScan:
    scan_id: str
    code: str
    scanned_at: str
    direction: str
    local_result: str
    seat: str | None


class Store:
    """Thread-safe (one connection, one lock): the terminal reads lines while a background thread syncs."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued scan must survive a power cut
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- manifest ---------------------------------------------------------------------------------------

    def save_manifest(self, body: dict[str, Any], *, full: bool) -> None:
        """Store a manifest answer: a full one replaces what is stored, a partial one adds to it."""
        head = {k: v for k, v in body.items() if k not in ("tickets", "revoked", "full")}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if full:
                    self._db.execute("DELETE FROM tickets")
                    self._db.execute("DELETE FROM revoked")
                else:
                    row = self._db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
                    head = {**(json.loads(row[0]) if row else {}), **head}
                self._db.executemany("INSERT OR REPLACE INTO tickets (serial, sealed) VALUES (?, ?)",
                                     ((int(serial), str(sealed)) for serial, sealed in body.get("tickets", [])))
                self._db.executemany("INSERT OR IGNORE INTO revoked (serial) VALUES (?)",
                                     ((int(serial),) for serial in body.get("revoked", [])))
                self._db.execute("INSERT INTO meta (key, value) VALUES ('manifest', ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (json.dumps(head),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def load_manifest(self) -> dict[str, Any] | None:
        """The stored manifest as one full answer, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
            if row is None:
                return None
            tickets = self._db.execute("SELECT serial, sealed FROM tickets ORDER BY serial").fetchall()
            revoked = [r[0] for r in self._db.execute("SELECT serial FROM revoked ORDER BY serial")]
        return {**json.loads(row[0]), "full": True, "tickets": tickets, "revoked": revoked}

    def refusal(self) -> str | None:
        """Why the gateway refused this device, once it did (kept: a refused device stays refused)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'refused'").fetchone()
        return None if row is None else json.loads(row[0])

    def refuse(self, reason: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('refused', ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (json.dumps(reason),))

    # -- seen-set ---------------------------------------------------------------------------------------

    def seen(self, event_id: int, serial: int) -> tuple[bool, str, str | None] | None:
        """(inside, first_at, gate) of a ticket this device knows was admitted, else None."""
        with self._lock:
            row = self._db.execute("SELECT inside, first_at, gate FROM seen WHERE event_id = ? AND serial = ?",
                                   (event_id, serial)).fetchone()
        return None if row is None else (bool(row[0]), row[1], row[2])

    def mark_seen(self, event_id: int, serial: int, *, at: str, gate: str | None, inside: bool = True) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO seen (event_id, serial, inside, first_at, gate) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id, serial) DO UPDATE SET inside = excluded.inside",
                (event_id, serial, int(inside), at, gate))

    # -- queue ------------------------------------------------------------------------------------------

    def enqueue(self, scan: QueuedScan) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO queue (scan_id, code, scanned_at, direction, local_result, seat) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (scan.scan_id, scan.code, scan.scanned_at, scan.direction, scan.local_result, scan.seat))

    def pending(self, limit: int) -> list[QueuedScan]:
        with self._lock:
            rows = self._db.execute(
                "SELECT scan_id, code, scanned_at, direction, local_result, seat FROM queue "
                "WHERE server_result IS NULL ORDER BY rowid LIMIT ?", (limit,)).fetchall()
        return [QueuedScan(*row) for row in rows]

    def pending_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM queue WHERE server_result IS NULL").fetchone()[0]

    def settle(self, scan_id: str, result: str, answer: dict[str, Any], at: str) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET server_result = ?, server_answer = ?, uploaded_at = ? "
                             "WHERE scan_id = ? AND server_result IS NULL",
                             (result, json.dumps(answer), at, scan_id))

    def settled(self) -> list[dict[str, Any]]:
        """Every uploaded scan with both answers (for the operator and the tests)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT scan_id, code, scanned_at, local_result, server_result, seat FROM queue "
                "WHERE server_result IS NOT NULL ORDER BY rowid").fetchall()
        return [dict(zip(("scan_id", "code", "scanned_at", "local_result", "server_result", "seat"), row))
                for row in rows]
