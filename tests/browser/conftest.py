"""Browser-test fixtures: the real app in a subprocess on a free port, driven by Debian's chromium.

Nothing is installed here (``make browser`` installs chromium; never ``playwright install``).
Without chromium or playwright the browser tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_process import start_app, stop_app
from pages import new_page, open_app, screenshot_open_pages

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def pytest_collection_modifyitems(items):
    """Under pytest-xdist every browser test runs in one worker: they share one app and one chromium."""
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """An empty workspace (presets/, runs/) the app writes into instead of the checkout."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "presets").mkdir()
    (root / "runs").mkdir()
    return root


@pytest.fixture(scope="session")
def app_url(workspace, tmp_path_factory):
    """``python app.py --port <free>`` with ``MEMFACTORY_WORKSPACE`` set; its URL once it answers."""
    process, url = start_app(workspace, tmp_path_factory.mktemp("app") / "app.log")
    try:
        yield url
    finally:
        stop_app(process)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Debian chromium with a fresh profile (persistent context in a temp dir)."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found (install it with `make browser`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser, app_url):
    page = new_page(browser)
    open_app(page, app_url)
    yield page
    page.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test's report names a screenshot of each page it had open."""
    report = yield
    if report.when == "call" and report.failed and item.get_closest_marker("browser"):
        report.sections.append(("browser screenshots", "\n".join(screenshot_open_pages(item.name))))
    return report
