"""A two-process CPU training run (DDP over gloo, ``accelerate launch``) driven from the Train tab.

In chromium: a bad launch choice is explained before launch; the command preview shows the
``accelerate launch`` line with the launch-time overrides, and that exact line is what runs
(the runner writes it at the top of stdout.log); curves (reward and hardware) appear; Abort ends
the launcher and both ranks (no orphans, checked in /proc); Resume repeats the two-process launch
on the same run, which stays one row in the runs database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from pages import choose, new_page, open_app, wait_text

from memfactory.tracking import process
from memfactory.tracking.runs import RunsDB
from tests.waiting import wait_until

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PRESET = "tiny_two_procs"


@pytest.fixture()
def mp_page(browser, app_url, workspace):
    data = yaml.safe_load((ROOT / "presets" / "tiny_test.yaml").read_text())
    data["name"] = PRESET
    (workspace / "presets" / f"{PRESET}.yaml").write_text(yaml.safe_dump(data))  # 3 steps; the UI overrides that
    page = new_page(browser)
    open_app(page, app_url)
    page.get_by_role("tab", name="Train", exact=True).first.click()
    page.wait_for_selector("#mf-train-status")
    yield page
    page.close()
    _kill_leftovers(workspace)


def _kill_leftovers(workspace: Path) -> None:
    """Whatever a failed assertion left running is killed (each run is its own process tree)."""
    for path in (workspace / "runs" / ".launch").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if isinstance(pid, int) and process.is_alive(pid):
            for member in process.process_tree(pid):
                try:
                    os.kill(member, 9)
                except ProcessLookupError:
                    pass


def _fill(page, box: str, value: str) -> None:
    field = page.locator(f"{box} input").first
    field.fill(value)
    field.press("Tab")  # commit the value (change event)


def _command(page) -> str:
    return page.locator("#mf-train-command .cm-content").inner_text().strip()


def _step(page) -> int:
    return int(page.locator("#mf-train-progress .mf-train-progress").get_attribute("data-step") or 0)


def _wait_step(page, at_least: int) -> int:
    page.wait_for_function(
        "n => Number(document.querySelector('#mf-train-progress .mf-train-progress')?.dataset.step || 0) >= n",
        arg=at_least)
    return _step(page)


def _gone(pid: int) -> bool:
    """The process no longer runs (no such pid, or a zombie waiting for init to reap it)."""
    try:
        os.killpg(pid, 0) if os.getpgid(pid) == pid else os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _launch(workspace: Path, run_id: str) -> dict:
    return json.loads((workspace / "runs" / ".launch" / f"{run_id}.json").read_text())


def _ranks_of(launcher: int) -> dict[int, int]:
    """The launcher and its two rank processes (torchrun starts each rank in a session of its own)."""
    return wait_until(lambda: len(tree := process.process_tree(launcher)) >= 3 and tree) or process.process_tree(launcher)


def _abort_and_check_no_orphans(page, tree: dict[int, int]) -> None:
    page.locator("#mf-train-abort").click()
    wait_text(page, "#mf-train-status", "aborted")
    wait_until(lambda: all(_gone(pid) for pid in tree))
    assert [pid for pid in tree if not _gone(pid)] == [], "processes of the aborted run survive"


HW_TRACES = """() => {
  const plot = document.querySelector('#mf-train-plot-hardware .js-plotly-plot');
  return plot ? (plot._fullData || []).map(t => t.name) : [];
}"""
REWARD_POINTS = """() => {
  const plot = document.querySelector('#mf-train-plot-reward .js-plotly-plot');
  const trace = plot && (plot._fullData || []).find(t => t.name === 'reward (mean)');
  return trace ? trace._length : 0;
}"""


def test_two_process_cpu_run_from_the_train_tab(mp_page, workspace, tmp_path):
    page = mp_page
    choose(page, "#mf-train-preset", PRESET, exact=True)
    wait_text(page, "#mf-train-hardware", "CPU")

    # a bad choice is explained before launch, and Start refuses it
    choose(page, "#mf-train-strategy", "DDP", exact=True)
    wait_text(page, "#mf-train-checks", "DDP with one process")
    page.locator("#mf-train-start").click()
    page.get_by_text("DDP with one process").nth(1).wait_for()  # the warning toast too

    _fill(page, "#mf-train-nproc", "2")
    _fill(page, "#mf-train-set-steps", "2000")
    _fill(page, "#mf-train-set-save_every", "2")
    _fill(page, "#mf-train-set-sample_every", "5")
    wait_text(page, "#mf-train-checks", "ready to launch")
    page.wait_for_function("() => (document.querySelector('#mf-train-command .cm-content')?.innerText || '')"
                           ".includes('trainer.sample_every=5')")
    preview = _command(page)
    assert "-m accelerate.commands.launch --config_file " in preview and "ddp_cpu.yaml --num_processes 2" in preview
    assert " -m memfactory train " in preview and "--set trainer.steps=2000 --set trainer.save_every=2" in preview
    assert f"/{PRESET}.yaml " in preview  # the picked preset, not the default a late refresh could put back

    page.locator("#mf-train-start").click()
    wait_text(page, "#mf-train-status", "running")
    run_id = page.locator("#mf-train-status code").first.inner_text()
    run_dir = workspace / "runs" / run_id
    assert run_dir.joinpath("stdout.log").read_text().splitlines()[0] == f"$ {preview}"  # what ran is what was shown
    assert yaml.safe_load((run_dir / "preset.yaml").read_text())["trainer"]["steps"] == 2000
    tree = _ranks_of(_launch(workspace, run_id)["pid"])
    assert len(tree) == 3, tree  # the launcher and two ranks

    first = _wait_step(page, 2)
    page.wait_for_function(f"({REWARD_POINTS})() >= 2")
    assert "/ 2000" in page.locator("#mf-train-progress").inner_text()
    page.wait_for_function(f"({HW_TRACES})().some(n => n.startsWith('rank 0 '))")
    _abort_and_check_no_orphans(page, tree)

    # Resume repeats the two-process launch on the same run
    page.locator("#mf-train-resume").click()
    wait_text(page, "#mf-train-status", "running")
    launch = _launch(workspace, run_id)
    assert "--resume" in launch["argv"] and launch["argv"][launch["argv"].index("--num_processes") + 1] == "2"
    assert launch["spec"]["strategy"] == "ddp" and "--set" not in launch["argv"]  # overrides live in the copy
    tree = _ranks_of(launch["pid"])
    assert len(tree) == 3, tree
    _wait_step(page, first + 1)
    _abort_and_check_no_orphans(page, tree)

    runs = [run for run in RunsDB(workspace / "runs" / "memfactory.db").list_runs() if run.name == PRESET]
    assert [run.id for run in runs] == [run_id] and runs[0].status == "aborted"
