"""What the terminal shows and sounds for each answer: the word in block letters on its colour, the
seat and holder, the running count, and its own bell pattern (BEL characters, counted)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from scanner_app.banner import big
from scanner_app.client import GatewayClient
from scanner_app.scanner import Scanner
from scanner_app.store import Store
from scanner_app.terminal import Terminal
from tests.scanner_app.test_offline import OTHER_SEED, code, manifest_body, nobody_listens

GREEN, YELLOW, RED, MAGENTA = "42m", "43m", "41m", "45m"


@pytest.fixture
def screen(tmp_path: Path):
    store = Store(tmp_path / "d.sqlite3")
    store.save_manifest(manifest_body(), full=True)
    client = GatewayClient(nobody_listens(), "d.token")
    scanner = Scanner(client=client, store=store, retry_s=60)
    scanner.start()
    out = io.StringIO()
    yield Terminal(scanner, out=out, bell=True, clear=False), scanner, out
    client.close()
    store.close()


def shown(out: io.StringIO, settle: float = 0.8) -> str:
    time.sleep(settle)  # the bell pattern plays in the background
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return text


@pytest.mark.parametrize(("serial", "forge", "word", "colour", "bells"), [
    (1, False, "ADMIT", GREEN, 1),
    (5, False, "VOID", RED, 3),
    (2, True, "INVALID", RED, 3),
])
def test_each_answer_has_its_word_colour_and_beeps(screen, serial: int, forge: bool, word: str, colour: str,
                                                   bells: int) -> None:
    term, scanner, out = screen
    term.show(scanner.scan(code(serial, seed=OTHER_SEED) if forge else code(serial)))
    text = shown(out)
    assert f">>> {word}" in text
    assert all(row.rstrip() in text for row in big(word))  # the block letters
    assert f"\x1b[1;97;{colour}" in text or f"\x1b[1;30;{colour}" in text
    assert text.count("\a") == bells


def test_duplicate_beeps_twice_and_says_where_first(screen) -> None:
    term, scanner, out = screen
    term.show(scanner.scan(code(1)))
    shown(out)
    term.show(scanner.scan(code(1)))
    text = shown(out)
    assert ">>> DUPLICATE   seat A-1-1   ada@example.org   ticket #1" in text
    assert "first scanned" in text and "at gate north" in text
    assert f"\x1b[1;30;{YELLOW}" in text and text.count("\a") == 2
    assert "admitted 1 · duplicate 1 · invalid 0" in text and "2 waiting to upload" in text


def test_wrong_event_and_no_bell(screen) -> None:
    term, scanner, out = screen
    term.show(scanner.scan(code(1, event=7, seed=OTHER_SEED)))
    text = shown(out, settle=1.0)
    assert ">>> WRONG EVENT" in text and f"\x1b[1;97;{MAGENTA}" in text and text.count("\a") == 2
    term.bell = False
    term.show(scanner.scan(code(2)))
    assert shown(out).count("\a") == 0
