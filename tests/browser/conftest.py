"""Real headless Chromium (Debian's, not a downloaded build) driving pages of the live gateway."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import need
from tests.utils.factories import auth, new_org

T = TypeVar("T")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots go to docs/screenshots only when asked (FLASHGATE_UPDATE_SCREENSHOTS=1), so a test run
# leaves the documentation alone; otherwise to a temporary folder.
DOC_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCREENSHOTS = DOC_SCREENSHOTS if os.environ.get("FLASHGATE_UPDATE_SCREENSHOTS") else \
    Path(tempfile.gettempdir()) / "flashgate-screenshots"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("FLASHGATE_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from a sync test (in its own thread: Playwright owns this one's loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")  # sync Playwright runs a loop in this thread: stop it before other tests
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("the playwright package is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        need("Chromium is missing: apt-get install chromium (or set FLASHGATE_CHROMIUM)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (empty localStorage) per test, phone-sized unless a test resizes it."""
    context = browser.new_context(viewport={"width": 420, "height": 900}, device_scale_factor=1, locale="en-GB",
                                  timezone_id="Europe/Amsterdam")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        page.close()
        context.close()


@pytest.fixture(scope="session")
def org_key(database_url: str) -> str:
    _, key = run_async(new_org(database_url, "Browser Tests"))
    return key


@pytest.fixture
def api(live_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_gateway, timeout=10) as client:
        yield client


def create_event(api: httpx.Client, key: str, spec: dict[str, Any], *, open_: bool = True) -> dict[str, Any]:
    resp = api.post("/v1/events", json=spec, headers=auth(key))
    assert resp.status_code == 201, resp.text
    event = resp.json()
    if open_:
        resp = api.post(f"/v1/events/{event['id']}/open", headers=auth(key))
        assert resp.status_code == 200, resp.text
    return event


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    """Keep a screenshot of this step for docs/buyer-demo.md."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"buyer-{name}.png"), full_page=full_page, animations="disabled",
                    caret="hide")
