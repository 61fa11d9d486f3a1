"""The Train tab in chromium, on real tiny training runs started by the app as subprocesses.

Start a long run, watch its curve grow, abort it; run a short one to the end; restart the UI
server on the same workspace and find a running job re-attached and still progressing.
The app here is this module's own process (it gets restarted), on its own temporary workspace.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from app_process import start_app, stop_app
from pages import choose, new_page, open_app

from tests.waiting import wait_until

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


class App:
    """``python app.py`` on a workspace; restartable (the trainer processes it started live on)."""

    def __init__(self, workspace: Path, log_dir: Path) -> None:
        self.workspace, self.log_dir = workspace, log_dir
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> str:
        self.starts += 1
        self.process, self.url = start_app(self.workspace, self.log_dir / f"app{self.starts}.log")
        return self.url

    def stop(self) -> None:
        stop_app(self.process)
        self.process = None


def _preset(workspace: Path, name: str, **trainer) -> None:
    data = yaml.safe_load((ROOT / "presets" / "tiny_test.yaml").read_text())
    data["name"] = name
    data["trainer"].update(trainer)
    (workspace / "presets" / f"{name}.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("train-workspace")
    (workspace / "presets").mkdir()
    (workspace / "runs").mkdir()
    _preset(workspace, "tiny_long", steps=3000, save_every=1000, sample_every=5)
    _preset(workspace, "tiny_short", steps=3, save_every=3, sample_every=1)
    # Valid, and it passes train's start-up checks (a model folder with a config.json), but the
    # weights cannot load: the trainer starts, then fails.
    _preset(workspace, "tiny_crash", steps=3)
    broken_model = workspace / "models" / "broken-model"
    broken_model.mkdir(parents=True)
    (broken_model / "config.json").write_text("{ not json")
    crash = yaml.safe_load((workspace / "presets" / "tiny_crash.yaml").read_text())
    crash["model"]["path"] = str(broken_model)
    (workspace / "presets" / "tiny_crash.yaml").write_text(yaml.safe_dump(crash))
    (workspace / "presets" / "tiny_broken.yaml").write_text("name: tiny_broken\nagent: direct\ntrainer: {steps: 0}\n")
    server = App(workspace, tmp_path_factory.mktemp("train-app"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        _kill_trainers(workspace)


def _kill_trainers(workspace: Path) -> None:
    """No training process outlives the tests (they are separate process groups by design)."""
    from memfactory.tracking.runs import RunsDB

    db_path = workspace / "runs" / "memfactory.db"
    if not db_path.exists():
        return
    for run in RunsDB(db_path).list_runs(status=("created", "running")):
        if run.pid and run.process_alive():
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture()
def train_page(browser, app):
    page = new_page(browser)
    _open(page, app.url)
    yield page
    page.close()


def _open(page, url: str) -> None:
    open_app(page, url)
    page.get_by_role("tab", name="Train", exact=True).first.click()
    page.wait_for_selector("#mf-train-status")


def _status(page) -> str:
    return page.locator("#mf-train-status").inner_text()


def _step(page) -> int:
    value = page.locator("#mf-train-progress .mf-train-progress").get_attribute("data-step")
    return int(value or 0)


def _wait_status(page, *words: str) -> None:
    """Wait until the status line shows every one of ``words`` at once."""
    page.wait_for_function("ws => ws.every(w => document.querySelector('#mf-train-status')?.innerText.includes(w))",
                           arg=list(words))


def _wait_step(page, at_least: int) -> int:
    page.wait_for_function(
        "n => Number(document.querySelector('#mf-train-progress .mf-train-progress')?.dataset.step || 0) >= n",
        arg=at_least)
    return _step(page)


REWARD_POINTS = """() => {
  const plot = document.querySelector('#mf-train-plot-reward .js-plotly-plot');
  const trace = plot && (plot._fullData || []).find(t => t.name === 'reward (mean)');
  return trace ? trace._length : 0;  // drawn points (plot.data holds plotly's packed arrays)
}"""


def test_start_watch_and_abort(train_page, tmp_path):
    page = train_page
    choose(page, "#mf-train-preset", "tiny_long", exact=True)
    page.locator("#mf-train-start").click()
    _wait_status(page, "running")
    first = _wait_step(page, 2)
    page.wait_for_function(f"({REWARD_POINTS})() >= 2")
    later = _wait_step(page, first + 1)
    assert later > first
    assert page.evaluate(REWARD_POINTS) >= 2
    progress = page.locator("#mf-train-progress").inner_text()
    assert "/ 3000" in progress and "ETA" in progress
    page.wait_for_function("() => document.querySelector('#mf-train-log textarea')?.value.includes('step ')")

    page.locator("#mf-train-abort").click()
    _wait_status(page, "aborted")
    status = _status(page)
    assert "tiny_long" in status and "aborted" in status


def test_invalid_preset_refused_then_short_run_finishes(train_page, app, tmp_path):
    from memfactory.tracking.runs import RunsDB
    from webui.train import launcher

    page = train_page
    # a run started outside this tab (as from the CLI) that crashes: it can be picked and shows its error
    crash_id, _ = launcher.start_run(app.workspace / "presets" / "tiny_crash.yaml", runs_dir=app.workspace / "runs")
    choose(page, "#mf-train-preset", "tiny_broken", exact=True)
    page.locator("#mf-train-start").click()
    # the ConfigError in a warning toast (the checks panel shows the same words before Start is pressed)
    page.locator('[data-testid="toast-body"]').filter(has_text="trainer.steps").first.wait_for()

    choose(page, "#mf-train-preset", "tiny_short", exact=True)
    page.locator("#mf-train-start").click()
    _wait_status(page, "finished")
    assert "tiny_short" in _status(page)
    assert _wait_step(page, 3) == 3
    page.wait_for_function(f"({REWARD_POINTS})() == 3")
    sample = page.locator("#mf-train-sample").inner_text()
    assert "Question" in sample and "Reward" in sample and "sub_em" in sample
    choose(page, "#mf-train-sample-step", "step 1", exact=True)
    page.wait_for_function("() => document.querySelector('#mf-train-sample')?.innerText.includes('Step 1 ')")
    page.wait_for_function("() => document.querySelector('#mf-train-log textarea')?.value.includes('finished')")

    db = RunsDB(app.workspace / "runs" / "memfactory.db")
    wait_until(lambda: (run := db.get(crash_id)) and run.status == "failed")
    page.locator("#mf-train-refresh").click()
    choose(page, "#mf-train-run", f"{crash_id} · failed", exact=True)
    _wait_status(page, "broken-model", "failed")


def test_restarted_ui_reattaches_to_a_running_job(browser, app, tmp_path):
    page = new_page(browser)
    try:
        _open(page, app.url)
        choose(page, "#mf-train-preset", "tiny_long", exact=True)
        page.locator("#mf-train-start").click()
        _wait_status(page, "running")
        _wait_step(page, 1)
        run_id = page.locator("#mf-train-status code").first.inner_text()

        app.stop()  # the trainer is its own process group: it keeps training
        app.start()
        _open(page, app.url)
        _wait_status(page, run_id)
        _wait_status(page, "running")
        before = _wait_step(page, 1)
        after = _wait_step(page, before + 1)
        assert after > before
        page.wait_for_function(f"({REWARD_POINTS})() >= 2")

        page.locator("#mf-train-abort").click()
        _wait_status(page, "aborted")
    finally:
        page.close()
