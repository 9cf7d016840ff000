"""The terminal screen for a keyboard-wedge barcode scanner: one code per line, a big answer per scan.

The scanner types each code followed by Enter; so can a person. A few words
typed instead of a code are commands: `out` and `in` switch the direction
(ticket types with re-entry), `sync` uploads the queue now, `quit` leaves.

All logic is in `Scanner`; this module only reads lines, draws and beeps.
A background thread calls `Scanner.tick()` every `tick_s` seconds: it notices
when the gateway is back, uploads the queue and prints what changed.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from datetime import datetime
from typing import TextIO

from scanner_app.banner import BEEPS, RESET, WORDS, render
from scanner_app.scanner import OFFLINE, Outcome, Reconciled, Scanner

CLEAR = "\x1b[2J\x1b[H"
STATUS_STYLE = {"online": "\x1b[1;32m", "degraded": "\x1b[1;33m", "offline": "\x1b[1;31m"}


def local_time(stamp: object) -> str:
    """An RFC 3339 time of the contract as the door's clock shows it (HH:MM:SS)."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return str(stamp)


class Terminal:
    def __init__(self, scanner: Scanner, *, out: TextIO = sys.stdout, bell: bool = True, tick_s: float = 1.0,
                 clear: bool = True) -> None:
        self.scanner, self.out, self.bell, self.tick_s, self.clear = scanner, out, bell, tick_s, clear
        self.direction = "in"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_mode = scanner.mode

    # -- drawing -------------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def status_line(self) -> str:
        s = self.scanner
        mode = s.mode.upper()
        waiting = s.waiting
        counts = s.counts
        parts = [f"{STATUS_STYLE.get(s.mode, '')}● {mode}{RESET}"]
        if s.revoked:
            parts.append(f"DEVICE REFUSED: {s.last_error}")
        if s.mode == OFFLINE:
            parts.append(f"{waiting} waiting to upload")
        elif waiting:
            parts.append(f"uploading {waiting}")
        parts.append(f"admitted {counts['admitted']} · duplicate {counts['duplicate']} · "
                     f"invalid {counts['invalid'] + counts['wrong_event'] + counts['void'] + counts['refused']}")
        if self.direction == "out":
            parts.append("DIRECTION: OUT")
        return "  |  ".join(parts)

    def header(self) -> str:
        m = self.scanner.manifest
        where = f"{m.event_name or 'event'} (#{m.event_id}) · gate {m.gate}" if m else "no manifest"
        return f"Flashgate door scanner — {where}\n{self.status_line()}\n"

    def show(self, outcome: Outcome) -> None:
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        m = self.scanner.manifest
        title = f"Flashgate door scanner — {m.event_name or 'event'} (#{m.event_id}) · gate {m.gate}\n" if m else ""
        lines = [CLEAR if self.clear else "\n", title, render(outcome.result, width), "\n"]
        word = WORDS.get(outcome.result, outcome.result.upper())
        detail = [f">>> {word}"]
        if outcome.seat:
            detail.append(f"seat {outcome.seat}")
        if outcome.holder:
            detail.append(outcome.holder)
        if outcome.serial is not None:
            detail.append(f"ticket #{outcome.serial}")
        lines.append("   ".join(detail) + "\n")
        if outcome.first_scan:
            first = outcome.first_scan
            lines.append(f"    first scanned {local_time(first.get('at'))} at gate {first.get('gate', '?')}\n")
        if outcome.reason:  # why refused; for an admission: re-entry, or not in the manifest yet
            lines.append(f"    ({outcome.reason})\n")
        if outcome.queued:
            lines.append("    checked on this device (offline); queued for the gateway\n")
        lines.append(self.status_line() + "\n")
        self._write("".join(lines))
        self.beep(outcome.result)

    def beep(self, result: str) -> None:
        if not self.bell:
            return
        gaps = BEEPS.get(result, BEEPS["invalid"])

        def ring() -> None:
            for gap in gaps:
                time.sleep(gap)
                self._write("\a")

        threading.Thread(target=ring, daemon=True).start()

    def show_reconciled(self, settled: list[Reconciled]) -> None:
        if not settled:
            return
        overruled = [r for r in settled if r.overruled]
        lines = [f"\n--- uploaded {len(settled)} offline scan(s): {len(settled) - len(overruled)} confirmed, "
                 f"{len(overruled)} changed by the gateway\n"]
        for r in overruled:
            first = r.first_scan or {}
            where = f" (first at gate {first.get('gate', '?')}, {local_time(first.get('at'))})" if first else ""
            lines.append(f"    ticket #{r.serial} seat {r.seat or '-'}: {WORDS.get(r.local, r.local)} here -> "
                         f"{WORDS.get(r.server, r.server.upper())}{where}\n")
        lines.append(self.status_line() + "\n")
        self._write("".join(lines))
        if overruled:
            self.beep("duplicate")

    # -- loops ---------------------------------------------------------------------------------------

    def _background(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                settled = self.scanner.tick()
            except Exception as exc:  # the door keeps working whatever the sync hit; say so
                self._write(f"\n(sync failed: {type(exc).__name__}: {exc})\n")
                continue
            if self.scanner.mode != self._last_mode:
                self._last_mode = self.scanner.mode
                self._write(f"\n{self.status_line()}\n")
            self.show_reconciled(settled)

    def command(self, word: str) -> bool:
        """Handle a typed command; False when the word is not one (then it is scanned as a code)."""
        if word in ("out", "in"):
            self.direction = word
            self._write(f"direction: {word.upper()}\n{self.status_line()}\n")
        elif word == "sync":
            self.show_reconciled(self.scanner.tick())
            self._write(self.status_line() + "\n")
        elif word == "quit":
            self._stop.set()
        else:
            return False
        return True

    def run(self, lines: TextIO = sys.stdin) -> int:
        self._write(self.header() + "Ready: scan a ticket.\n")
        worker = threading.Thread(target=self._background, daemon=True)
        worker.start()
        try:
            for line in lines:
                code = line.strip()
                if not code:
                    continue
                if self.command(code.lower()):
                    if self._stop.is_set():
                        break
                    continue
                self.show(self.scanner.scan(code, direction=self.direction))
                self._last_mode = self.scanner.mode
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            worker.join(timeout=5)
        waiting = self.scanner.waiting
        self._write(f"\nbye: {waiting} scan(s) still waiting to upload\n" if waiting else "\nbye\n")
        return 0
