"""The Runs tab in chromium: a run recorded in the workspace's runs database shows up and plots."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_runs_table_and_overlay(page, workspace, tmp_path):
    from memfactory.tracking.runs import RunsDB

    db = RunsDB(workspace / "runs" / "memfactory.db")
    run_id = "20261129-000000-browser-run"
    if db.get(run_id) is None:
        db.create_run("browser_preset", workspace / "runs" / run_id, run_id=run_id, total_steps=4)
        db.set_status(run_id, "running")
        for step, reward in enumerate([0.1, 0.3, 0.2, 0.5], 1):
            db.log_metrics(run_id, step, {"reward/mean": reward, "reward/std": 0.1})
            db.update_progress(run_id, step, reward=reward)
        db.set_status(run_id, "finished")

    page.get_by_role("tab", name="Runs").click()
    page.locator("#mf-runs-refresh").click()
    table = page.locator("#mf-runs-table")
    page.wait_for_function("id => document.querySelector('#mf-runs-table')?.innerText.includes(id)", arg=run_id)
    assert "finished" in table.inner_text() and "4/4" in table.inner_text()

    page.locator("#mf-runs-select input").click()
    page.get_by_role("option", name=run_id).click()
    page.wait_for_selector("#mf-runs-overlay .js-plotly-plot .scatterlayer .trace")
    page.keyboard.press("Escape")
    page.screenshot(path=str(tmp_path / "runs_overlay.png"), full_page=True)

    # One run in detail: its own figures (reward with std band, ...).
    page.get_by_text("One run in detail").first.click()
    page.locator("#mf-run-detail input").click()
    page.get_by_role("option", name=run_id).click()
    page.wait_for_selector("#mf-run-plot-reward .js-plotly-plot .scatterlayer .trace")
    page.screenshot(path=str(tmp_path / "run_detail.png"), full_page=True)
