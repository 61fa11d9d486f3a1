"""The Export tab in a real chromium: a finished LoRA run of the tiny model exported merged in bfloat16,
its files listed with sizes, the equivalent command shown, and the folder loaded to answer one prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pages import STATE_WAIT_MS, choose, wait_text

pytestmark = pytest.mark.browser

RUN_ID = "20261207-000001-export"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def lora_run(workspace) -> Path:
    """``memfactory train presets/tiny_test.yaml`` with a LoRA adapter, 2 steps, into the test workspace."""
    run_dir = workspace / "runs" / RUN_ID
    if not run_dir.is_dir():
        subprocess.run([str(Path(sys.executable).parent / "memfactory"), "train", "presets/tiny_test.yaml",
                        "--runs-dir", str(workspace / "runs"), "--run-id", RUN_ID, "--no-progress",
                        "--set", "trainer.lora={r: 4, alpha: 8}", "--set", "trainer.steps=2"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True,
                       timeout=STATE_WAIT_MS / 1000)
    return run_dir


def test_export_a_run_merged_and_load_it(page, lora_run):
    page.get_by_role("tab", name="Export").click()
    page.locator("#mf-ex-refresh").click()
    choose(page, "#mf-ex-run", RUN_ID)
    wait_text(page, "#mf-ex-command", f"-m memfactory export {RUN_ID} ")
    page.locator("#mf-ex-mode").get_by_text("merged model").click()
    choose(page, "#mf-ex-dtype", "bfloat16")
    command = wait_text(page, "#mf-ex-command", "--merge --dtype bfloat16")
    assert "--db " + str(lora_run.parent / "memfactory.db") in command

    page.locator("#mf-ex-export").click()
    folder = lora_run / "export" / "step-000002-merged-bfloat16"
    result = wait_text(page, "#mf-ex-result", "✅ exported to")
    assert str(folder) in result and f"memfactory serve --model {folder}" in result
    files = wait_text(page, "#mf-ex-files", "model.safetensors")
    assert "config.json" in files and "total (" in files and "KiB" in files
    assert (folder / "model.safetensors").is_file()

    page.locator("#mf-ex-test").click()
    tested = wait_text(page, "#mf-ex-tested", "✅ loads:")
    assert str(folder) in tested and "greedy" in tested
