"""The Runs tab in chromium: a run recorded in the workspace's runs database shows up and plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from pages import STATE_WAIT_MS, choose

pytestmark = pytest.mark.browser


def test_runs_table_and_overlay(page, workspace, tmp_path):
    from memfactory.tracking.metrics import MetricsWriter
    from memfactory.tracking.runs import RunsDB

    db = RunsDB(workspace / "runs" / "memfactory.db")
    run_id = "20261129-000000-browser-run"
    if db.get(run_id) is None:
        db.create_run("browser_preset", workspace / "runs" / run_id, run_id=run_id, total_steps=4)
        db.set_status(run_id, "running")
        with MetricsWriter(workspace / "runs" / run_id) as writer:  # as the trainer records a step
            for step, reward in enumerate([0.1, 0.3, 0.2, 0.5], 1):
                writer.write(step, {"reward/mean": reward, "reward/std": 0.1, "hw/peak_gib": 2.25 + step})
                db.update_progress(run_id, step, reward=reward, peak_gib=2.25 + step)
        db.set_status(run_id, "finished")

    page.get_by_role("tab", name="Runs").click()
    page.locator("#mf-runs-refresh").click()
    table = page.locator("#mf-runs-table")
    page.wait_for_function("id => document.querySelector('#mf-runs-table')?.innerText.includes(id)", arg=run_id)
    assert "finished" in table.inner_text() and "4/4" in table.inner_text()
    assert "peak GiB" in table.inner_text() and "6.25" in table.inner_text()  # the run's largest hw/peak_gib

    choose(page, "#mf-runs-select", run_id)
    page.wait_for_selector("#mf-runs-overlay .js-plotly-plot .scatterlayer .trace")
    page.keyboard.press("Escape")

    # One run in detail: its own figures (reward with std band, ...).
    page.get_by_text("One run in detail").first.click()
    choose(page, "#mf-run-detail", run_id)
    page.wait_for_selector("#mf-run-plot-reward .js-plotly-plot .scatterlayer .trace")


RUN_ID = "20261129-000001-open-delete"


@pytest.fixture()
def trained_run(workspace):
    """A real finished run: ``memfactory train presets/tiny_test.yaml`` (2 steps) into the test workspace."""
    import os
    import subprocess
    import sys

    run_dir = workspace / "runs" / RUN_ID
    if not run_dir.is_dir():
        subprocess.run([str(Path(sys.executable).parent / "memfactory"), "train", "presets/tiny_test.yaml", "--runs-dir", str(workspace / "runs"),
                        "--run-id", RUN_ID, "--no-progress", "--set", "name=runs_browser_open",
                        "--set", "trainer.steps=2"],
                       cwd=Path(__file__).resolve().parents[2], env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True,
                       timeout=STATE_WAIT_MS / 1000)
    assert (run_dir / "preset.yaml").is_file()
    return run_dir


def _pick_run(page, run_id):
    choose(page, "#mf-run-manage", run_id)


def test_open_in_assemble_and_delete(page, workspace, trained_run, tmp_path):
    page.get_by_role("tab", name="Runs").click()
    page.locator("#mf-runs-refresh").click()
    page.wait_for_function("id => document.querySelector('#mf-runs-table')?.innerText.includes(id)", arg=RUN_ID)
    assert "finished" in page.locator("#mf-runs-table").inner_text()

    # open the run's preset in Assemble: the tab switches and the form shows the run's values
    _pick_run(page, RUN_ID)
    page.locator("#mf-run-open").click()
    page.wait_for_function(
        "() => document.querySelector('#mf-name input, #mf-name textarea')?.value === 'runs_browser_open'")
    assert page.get_by_role("tab", name="Assemble", selected=True).count() >= 1
    assert page.locator("#mf-model-path input, #mf-model-path textarea").first.input_value() == "tiny://qwen3-mini"
    # trainer.steps sits in a closed accordion (slow to open on a loaded machine): read it off the YAML
    # preview, which Assemble renders from the widgets' values
    page.wait_for_function("() => { const text = document.querySelector('#mf-yaml')?.innerText || '';"
                           " return text.includes('name: runs_browser_open') && /\\bsteps: 2\\n/.test(text); }")

    # delete without confirmation: refused, nothing lost
    page.get_by_role("tab", name="Runs").first.click()
    page.locator("#mf-run-delete").click()
    page.wait_for_function("() => document.querySelector('#mf-run-manage-note')?.innerText.includes('tick')")
    assert RUN_ID in page.locator("#mf-runs-table").inner_text() and trained_run.is_dir()

    # with confirmation: the row and the folder are gone
    page.locator("#mf-run-delete-confirm input").check()
    page.locator("#mf-run-delete").click()
    page.wait_for_function("id => !document.querySelector('#mf-runs-table')?.innerText.includes(id)", arg=RUN_ID)
    assert "deleted run" in page.locator("#mf-run-manage-note").inner_text()
    assert not trained_run.exists()
    assert not page.locator("#mf-run-delete-confirm input").is_checked()
    assert page.get_by_text("not in the list of choices").count() == 0  # no error toast from a stale dropdown
    # every tab's button shows once in the tab bar (it used to show twice after a click)
    tab_bar = [text.strip() for text in page.locator("#mf-tabs button[role=tab]:visible").all_inner_texts()]
    assert tab_bar.count("Runs") == 1 and tab_bar.count("Assemble") == 1, tab_bar
