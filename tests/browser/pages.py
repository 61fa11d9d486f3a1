"""Pages for the browser tests: one wait policy, and a screenshot of every open page when a test fails.

Every wait in these tests waits for a state of the page (a text, a count, a value), never for a time
guessed for one machine. ``STATE_WAIT_MS`` only turns a hung app into a failure that says what it was
waiting for (Playwright's message) instead of hanging the run; it is far above any step of these tests
on a loaded 2-core machine, so a slow machine is never a failure.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

STATE_WAIT_MS = 300_000
SHOTS_DIR = Path(os.environ.get("MEMFACTORY_BROWSER_SHOTS", Path(tempfile.gettempdir()) / "memfactory-browser-failures"))

_open_pages: list = []  # the pages of the test that runs now (a test closes its own)


def new_page(browser):
    """A page of the shared chromium with the one wait policy, remembered for a failure screenshot."""
    page = browser.new_page()
    page.set_default_timeout(STATE_WAIT_MS)
    page.set_default_navigation_timeout(STATE_WAIT_MS)
    _open_pages.append(page)
    page.on("close", lambda closed: _open_pages.remove(closed) if closed in _open_pages else None)
    return page


def open_app(page, url: str) -> None:
    """Load the app and wait for its tab bar."""
    page.goto(url)
    page.wait_for_selector("#mf-tabs")


def choose(page, dropdown: str, option: str, *, exact: bool = False) -> None:
    """Open the Gradio dropdown at ``dropdown`` and click ``option`` in its own list: another dropdown's
    list that is still closing may hold the same option (a page-wide lookup would find both)."""
    page.locator(f"{dropdown} input").click()
    page.locator(dropdown).get_by_role("option", name=option, exact=exact).click()


def wait_text(page, selector: str, text: str) -> str:
    """Wait until the element at ``selector`` shows ``text``; return its whole text."""
    page.wait_for_function("([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)",
                           arg=[selector, text])
    return page.locator(selector).inner_text()


def screenshot_open_pages(test_name: str) -> list[str]:
    """Full-page PNGs of the open pages, for the report of a failed test: one line per page, its
    path, or why it could not be shot (a crashed page must not hide the test's own failure)."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    lines = []
    for index, page in enumerate(list(_open_pages)):
        path = SHOTS_DIR / f"{stem}-{index}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception as exc:  # noqa: BLE001 - best effort: the assertion that failed is what the report is about
            lines.append(f"page {index}: no screenshot ({type(exc).__name__}: {exc})")
        else:
            lines.append(str(path))
    return lines
