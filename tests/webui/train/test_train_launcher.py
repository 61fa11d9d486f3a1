"""The run launcher on real processes: ``memfactory train`` started the way the UI starts it.

The process work it uses (spawn, abort, liveness, tails) is tested in tests/tracking/test_process.py."""

from __future__ import annotations

import pytest

from memfactory.paths import presets_dir
from memfactory.tracking import process
from memfactory.tracking.metrics import read_records
from tests.waiting import wait_until
from webui.train import launcher


def test_start_run_launches_memfactory_train(tmp_path):
    """The real CLI runs; an invalid preset makes it exit 2 with the problem in stdout.log."""
    preset = tmp_path / "broken.yaml"
    preset.write_text("name: broken\n")
    runs = tmp_path / "runs"
    run_id, pid = launcher.start_run(preset, runs_dir=runs)
    assert run_id.endswith(tuple("0123456789abcdef")) and "broken" in run_id
    assert run_id[16:-5] == process.slugify("broken")  # the one run-id format (the CLI's as well)
    assert wait_until(lambda: not process.is_alive(pid))
    assert process.exit_code(pid) == 2
    log = (runs / run_id / "stdout.log").read_text()
    assert "invalid preset" in log and "agent" in log
    with pytest.raises(FileExistsError):
        launcher.start_run(preset, runs_dir=runs, run_id=run_id)
    with pytest.raises(FileNotFoundError):
        launcher.start_run(tmp_path / "missing.yaml", runs_dir=runs)


def test_start_run_trains_the_tiny_preset(tmp_path):
    """A real 2-step GRPO run on the tiny model, started the way the UI starts it."""
    preset = presets_dir() / "tiny_test.yaml"
    runs = tmp_path / "runs"
    run_id, pid = launcher.start_run(preset, runs_dir=runs, extra_args=["--set", "trainer.steps=2"])
    assert wait_until(lambda: not process.is_alive(pid))
    log = process.tail(runs / run_id / "stdout.log", 40)
    assert process.exit_code(pid) == 0, log
    records = read_records(runs / run_id / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert "reward" in process.tail(runs / run_id / "stdout.log", 40)
