"""The Playground tab in a real chromium: two workflows on a tiny synthetic set, side by side.

Both default workflows (direct, memagent) run on the tiny model through the "model path for all"
field, so the test takes seconds; then a dead endpoint is added as a third workflow and only it fails.
"""

from __future__ import annotations

import csv
import socket

import pytest

pytestmark = pytest.mark.browser

TINY = "tiny://qwen3-mini"


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.blur()


def _wait_text(page, selector: str, text: str, timeout: float = 90_000) -> str:
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.innerText.includes(text)", arg=[selector, text], timeout=timeout)
    return page.locator(selector).inner_text()


def _wait_columns(page, count: int, timeout: float = 90_000) -> None:
    """The side-by-side view is the run's last output: wait for one column per workflow."""
    page.wait_for_function("n => document.querySelectorAll('#mf-pg-sample-view .mf-pg-col').length === n",
                           arg=count, timeout=timeout)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_playground_compares_two_workflows(page, tmp_path):
    page.get_by_role("tab", name="Playground").click()
    page.wait_for_selector("#mf-pg-run")
    # defaults: the demo set, two workflows ticked (direct and memagent, SmolLM2 presets)
    assert page.locator("#mf-pg-set input").input_value() == "eval_docqa"
    assert page.locator("#mf-pg-on-0 input").is_checked() and page.locator("#mf-pg-on-1 input").is_checked()
    assert not page.locator("#mf-pg-on-2 input").is_checked()
    assert page.locator("#mf-pg-preset-1 input").input_value() == "memagent_smollm2_cpu"

    # workflow 1 -> the tiny_test preset (picked from the dropdown); every workflow on the tiny model
    page.locator("#mf-pg-preset-0 input").click()
    page.get_by_role("option", name="tiny_test", exact=True).click()
    _fill(page, "mf-pg-label-0", "direct tiny")
    _fill(page, "mf-pg-model", TINY)
    n = page.locator("#mf-pg-n input").first
    n.fill("2")
    n.blur()
    page.locator("#mf-pg-run").click()

    _wait_columns(page, 2)
    summary = page.locator("#mf-pg-summary").inner_text()
    assert "memagent" in summary and "direct tiny" in summary and summary.count("ok") >= 2
    table = page.locator("#mf-pg-table").inner_text()
    for column in ("direct tiny · score", "memagent · score", "direct tiny · answer", "memagent · tokens"):
        assert column in table, column
    assert "eval_docqa-0" in table and "eval_docqa-1" in table
    assert "chunk 0" in page.locator("#mf-pg-sample-view").inner_text()  # memagent's memory trace
    page.screenshot(path=str(tmp_path / "playground_two.png"), full_page=True)

    # the CSV download holds both workflows' rows
    with page.expect_download() as info:
        page.locator("#mf-pg-csv").click()
    path = tmp_path / "comparison.csv"
    info.value.save_as(path)
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["workflow"] for r in rows}) == ["direct tiny", "memagent"] and len(rows) == 4

    # a dead endpoint as a third workflow: its error is shown, the other two still answer
    page.locator("#mf-pg-on-2 input").check()
    _fill(page, "mf-pg-label-2", "dead api")
    page.locator("#mf-pg-slot-2").get_by_text("OpenAI-compatible endpoint").click()
    _fill(page, "mf-pg-url-2", f"http://127.0.0.1:{_closed_port()}/v1")
    _fill(page, "mf-pg-served-2", "nothing")
    page.locator("#mf-pg-run").click()
    _wait_columns(page, 3)
    errors = page.locator("#mf-pg-errors").inner_text()
    assert "dead api" in errors and "cannot reach" in errors and "Traceback" not in errors
    summary = page.locator("#mf-pg-summary").inner_text()
    assert "dead api" in summary and summary.count("ok") >= 2 and "error" in summary
    page.screenshot(path=str(tmp_path / "playground_dead_endpoint.png"), full_page=True)

    # the locale switch relabels the tab's widgets
    page.locator("#mf-lang input").click()
    page.get_by_role("option", name="中文").click()
    page.wait_for_function("document.querySelector('#mf-pg-run')?.innerText.includes('开始对比')")
    assert "评测集" in page.locator("#mf-pg-set").inner_text()
