"""The Playground tab in a real chromium: two workflows on a tiny synthetic set, side by side.

Both default workflows (direct, memagent) run on the tiny model through the "model path for all"
field, so the test takes seconds; then a dead endpoint and a fourth workflow are added and only the
endpoint fails. The per-sample table's rendered column widths are measured after both runs.
"""

from __future__ import annotations

import csv

import pytest

from memfactory.tracking.process import free_port

pytestmark = pytest.mark.browser

TINY = "tiny://qwen3-mini"


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.blur()


def _wait_columns(page, count: int) -> None:
    """The side-by-side view is the run's last output: wait for one column per workflow."""
    page.wait_for_function("n => document.querySelectorAll('#mf-pg-sample-view .mf-pg-col').length === n",
                           arg=count)


# Narrowest any column of the per-sample table may render, the least the answer column gets, and the
# tallest a header's text may be (two lines); measured in chromium at the fixture's 1400 px viewport.
# The old wide layout (one column group per workflow) rendered 40 px columns whose headers wrapped
# one letter a line, and overflowed the page at 4 workflows.
MIN_COLUMN_PX, MIN_ANSWER_PX, MAX_HEADER_TEXT_PX = 60, 250, 48

LAYOUT_JS = """() => {
  const root = document.querySelector('#mf-pg-table');
  const width = e => e.getBoundingClientRect().width;
  const heads = [...root.querySelectorAll('th.header-cell')].map(th => {
    const text = th.querySelector('.header-content span') || th;
    return [th.innerText.replace('⋮', '').trim(), width(th), text.getBoundingClientRect().height];
  });
  // Gradio 6 draws the body as a virtual list: div.virtual-row > div.body-cell (only rows in view)
  const rows = [...root.querySelectorAll('.virtual-row')].map(row => [...row.querySelectorAll('.body-cell')].map(width));
  const viewport = root.querySelector('.virtual-table-viewport');
  return {heads, rows, overflow: viewport.scrollWidth - viewport.clientWidth};
}"""


def _assert_readable_columns(page, rows: int) -> None:
    """Every header and cell of the per-sample table is at least ``MIN_COLUMN_PX`` wide with its
    header on at most two lines, the answer column has room, and nothing overflows sideways."""
    page.wait_for_function("() => document.querySelectorAll('#mf-pg-table .virtual-row').length > 0")
    layout = page.evaluate(LAYOUT_JS)
    names = [name for name, *_ in layout["heads"]]
    assert names[:3] == ["sample", "workflow", "answer"], names
    assert all(px >= MIN_COLUMN_PX and text_px <= MAX_HEADER_TEXT_PX for _, px, text_px in layout["heads"]), layout
    assert {name: px for name, px, _ in layout["heads"]}["answer"] >= MIN_ANSWER_PX, layout["heads"]
    assert 1 <= len(layout["rows"]) <= rows, layout["rows"]  # rows scrolled out of view are not drawn
    for cells in layout["rows"]:
        assert len(cells) == len(names) and min(cells) >= MIN_COLUMN_PX, layout["rows"]
    assert layout["overflow"] <= 1, layout  # no sideways scrolling at 1400 px


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
    for column in ("workflow", "answer", "score", "tokens", "direct tiny", "memagent"):
        assert column in table, column
    assert "eval_docqa-0" in table and "eval_docqa-1" in table
    _assert_readable_columns(page, rows=2 * 2)
    assert "chunk 0" in page.locator("#mf-pg-sample-view").inner_text()  # memagent's memory trace

    # the CSV download holds both workflows' rows
    with page.expect_download() as info:
        page.locator("#mf-pg-csv").click()
    path = tmp_path / "comparison.csv"
    info.value.save_as(path)
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["workflow"] for r in rows}) == ["direct tiny", "memagent"] and len(rows) == 4

    # a dead endpoint as a third workflow and a fourth on the tiny preset: the dead one's error is
    # shown, the other three still answer, and four workflows still give readable columns
    page.locator("#mf-pg-on-2 input").check()
    _fill(page, "mf-pg-label-2", "dead api")
    page.locator("#mf-pg-slot-2").get_by_text("OpenAI-compatible endpoint").click()
    _fill(page, "mf-pg-url-2", f"http://127.0.0.1:{free_port()}/v1")
    _fill(page, "mf-pg-served-2", "nothing")
    page.locator("#mf-pg-on-3 input").check()
    _fill(page, "mf-pg-preset-3", "tiny_test")
    _fill(page, "mf-pg-label-3", "a fourth workflow with a long name")
    page.locator("#mf-pg-run").click()
    _wait_columns(page, 4)
    errors = page.locator("#mf-pg-errors").inner_text()
    assert "dead api" in errors and "cannot reach" in errors and "Traceback" not in errors
    summary = page.locator("#mf-pg-summary").inner_text()
    assert "dead api" in summary and summary.count("ok") >= 3 and "error" in summary
    assert "(failed: " in page.locator("#mf-pg-table").inner_text()  # the dead workflow's rows say why
    _assert_readable_columns(page, rows=2 * 4)

    # the locale switch relabels the tab's widgets
    page.locator("#mf-lang input").click()
    page.get_by_role("option", name="中文").click()
    page.wait_for_function("document.querySelector('#mf-pg-run')?.innerText.includes('开始对比')")
    assert "评测集" in page.locator("#mf-pg-set").inner_text()
