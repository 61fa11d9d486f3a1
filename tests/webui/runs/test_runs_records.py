"""What the Runs tab shows and does (webui.runs.records) on a real SQLite runs database and real metrics.jsonl files."""

from __future__ import annotations

import json

import pandas as pd

from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import MetricsWriter
from memfactory.tracking.runs import RunsDB
from webui.runs import records


def _step(db, writer, run_id, step, metrics, **summary):
    """One trainer step as TrainingSession records it: metrics.jsonl, then the run row's summary."""
    writer.write(step, metrics)
    db.update_progress(run_id, step, metrics.get(keys.REWARD_MEAN), peak_gib=metrics.get(keys.HW_PEAK_GIB), **summary)


def test_runs_table_and_overlay(tmp_path):
    db = RunsDB(tmp_path / "runs" / "memfactory.db")
    a = db.create_run("preset_a", tmp_path / "runs" / "a", run_id="a", total_steps=3).id
    db.set_status(a, "running")
    with MetricsWriter(tmp_path / "runs" / "a") as writer:
        for step, reward in enumerate([0.1, 0.4, 0.3], 1):
            _step(db, writer, a, step, {keys.REWARD_MEAN: reward, keys.LOSS: 1.0, keys.HW_PEAK_GIB: 1.0 + step / 8})
    db.set_status(a, "finished")
    b_dir = tmp_path / "runs" / "b"
    b_dir.mkdir(parents=True)
    (b_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in (1, 2)))
    db.create_run("preset_b", b_dir, run_id="b")
    c = db.create_run("preset_c", tmp_path / "runs" / "c", run_id="c", total_steps=10).id
    db.set_status(c, "running")  # this test process: alive
    db.update_progress(c, 4, reward=0.5, seconds_per_step=2.0, eta_s=12.0)

    table = records.runs_table(db)
    assert list(table.columns) == records.COLUMNS
    row = table.set_index("run").loc["a"]
    assert row["status"] == "finished" and row["steps"] == "3/3" and row["preset"] == "preset_a"
    assert row["best reward"] == 0.4 and row["last reward"] == 0.3
    assert row["peak GiB"] == 1.38  # the largest hw/peak_gib logged (1.375), as the trainer logs it
    assert row["ETA"] == "-" and row["duration"].count(":") == 2  # H:MM:SS, the CLI's format too
    assert table.set_index("run").loc["b", "status"] == "created"
    assert pd.isna(table.set_index("run").loc["b", "peak GiB"])  # no step yet: empty, not 0
    assert table.set_index("run").loc["c", "ETA"] == "0:00:12"  # the trainer's ETA, as runs show prints it

    fig = records.overlay(db, ["a", "b", "c", "missing"])
    assert [t.name for t in fig.data] == ["a", "b"]  # c has no metrics.jsonl yet, missing is no run
    assert list(fig.data[0].y) == [0.1, 0.4, 0.3] and list(fig.data[1].x) == [1, 2]
    assert "no runs" in " ".join(x.text for x in records.overlay(db, []).layout.annotations)


def test_dead_trainer_is_marked_failed_on_refresh(tmp_path):
    db = RunsDB(tmp_path / "memfactory.db")
    run = db.create_run("p", tmp_path / "r", run_id="dead").id
    db.set_status(run, "running", pid=2**22 + 12345)  # no such process
    assert records.runs_table(db).set_index("run").loc["dead", "status"] == "failed"


def test_run_details_figures_and_log(tmp_path):
    db = RunsDB(tmp_path / "memfactory.db")
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    run = db.create_run("p", run_dir, run_id="r1").id
    with MetricsWriter(run_dir) as writer:
        _step(db, writer, run, 1, {keys.REWARD_MEAN: 0.2, keys.REWARD_STD: 0.1, keys.LOSS: 0.5, keys.KL: 0.0,
                                   keys.CLIP_RATIO: 0.1, keys.RESPONSE_LENGTH_MEAN: 12.0})
    (run_dir / "samples.jsonl").write_text(json.dumps({"step": 1, "rewards": [[0.0, 1.0], [0.5, 0.5]]}) + "\n")
    (run_dir / "stdout.log").write_text("loading\nstep 1/1 reward 0.2\n")
    db.set_status(run, "failed", error="boom")
    figures, log = records.run_details(db, "r1")
    assert set(figures) == {"reward", "distribution", "loss", "kl", "length", "clip"}
    assert sorted(figures["distribution"].data[0].y) == [0.0, 0.5, 0.5, 1.0]
    assert figures["length"].data[0].y[0] == 12.0
    assert "step 1/1" in log and "boom" in log
    empty, log = records.run_details(db, None)
    assert log == "" and all("no data yet" in f.layout.annotations[0].text for f in empty.values())


def _finished_run(db, runs_dir, run_id, preset_text="name: from_run\n"):
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "preset.yaml").write_text(preset_text)
    (run_dir / "metrics.jsonl").write_text("")
    db.create_run("from_run", run_dir, run_id=run_id)
    db.set_status(run_id, "running")
    db.set_status(run_id, "finished")
    return run_dir


def test_run_preset_file_is_confined_to_the_workspace(tmp_path, monkeypatch):
    import pytest

    from memfactory.errors import MemFactoryError
    from webui import workspace

    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path / "ws"))
    runs_dir = workspace.runs_dir()
    db = RunsDB(workspace.runs_db())
    run_dir = _finished_run(db, runs_dir, "inside")
    assert records.run_preset_file(db, "inside") == (run_dir / "preset.yaml").resolve()

    outside = tmp_path / "elsewhere" / "outside"
    outside.mkdir(parents=True)
    (outside / "preset.yaml").write_text("name: x\n")
    db.create_run("x", outside, run_id="outside")
    with pytest.raises(MemFactoryError, match="outside"):
        records.run_preset_file(db, "outside")

    # a preset.yaml that is a symlink out of the workspace is refused as well
    sneaky = runs_dir / "sneaky"
    sneaky.mkdir()
    (sneaky / "preset.yaml").symlink_to(outside / "preset.yaml")
    db.create_run("s", sneaky, run_id="sneaky")
    with pytest.raises(MemFactoryError, match="outside"):
        records.run_preset_file(db, "sneaky")

    (run_dir / "preset.yaml").unlink()
    with pytest.raises(MemFactoryError, match="no preset.yaml"):
        records.run_preset_file(db, "inside")
    with pytest.raises(MemFactoryError, match="no run|unknown|nope"):
        records.run_preset_file(db, "nope")
    with pytest.raises(MemFactoryError, match="pick a run"):
        records.run_preset_file(db, None)


def test_run_preset_fills_the_assemble_form(tmp_path, monkeypatch):
    """The Runs tab hands a run's preset.yaml to Assemble's loader: the form shows its values."""
    from memfactory.paths import presets_dir
    from webui import workspace
    from webui.assemble.files import load_file
    from webui.assemble.form import build_form

    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path / "ws"))
    db = RunsDB(workspace.runs_db())
    text = (presets_dir() / "tiny_test.yaml").read_text().replace("steps: 3", "steps: 7")
    _finished_run(db, workspace.runs_dir(), "r", text)
    form = build_form()
    values, _notes = load_file(form, records.run_preset_file(db, "r"))
    assert values[form.index("name")] == "tiny_test"
    assert values[form.index("trainer.steps")] == 7
    assert values[form.index("model.path")] == "tiny://qwen3-mini"


def test_delete_run_needs_confirmation_and_a_stopped_run(tmp_path, monkeypatch):
    import os

    import pytest

    from memfactory.errors import MemFactoryError
    from webui import workspace

    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path / "ws"))
    runs_dir = workspace.runs_dir()
    db = RunsDB(workspace.runs_db())
    done = _finished_run(db, runs_dir, "done")
    keep = _finished_run(db, runs_dir, "keep")
    (done / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5}) + "\n")

    with pytest.raises(MemFactoryError, match="tick"):
        records.delete_run(db, "done", confirmed=False)
    assert db.get("done") is not None and done.is_dir()

    live_dir = runs_dir / "live"
    live_dir.mkdir()
    db.create_run("p", live_dir, run_id="live")
    db.set_status("live", "running", pid=os.getpid())  # this process: alive
    with pytest.raises(MemFactoryError, match="still running"):
        records.delete_run(db, "live", confirmed=True)
    assert db.get("live") is not None and live_dir.is_dir()

    message = records.delete_run(db, "done", confirmed=True)
    assert "deleted run done" in message and "folder" in message
    assert db.get("done") is None and not done.exists()  # its metrics.jsonl went with its folder
    assert db.get("keep") is not None and (keep / "preset.yaml").is_file()
    assert "done" not in records.runs_table(db)["run"].tolist()

    # a run recorded with a folder outside the workspace: the row goes, the folder stays
    outside = tmp_path / "elsewhere" / "far"
    outside.mkdir(parents=True)
    db.create_run("p", outside, run_id="far")
    message = records.delete_run(db, "far", confirmed=True)
    assert db.get("far") is None and outside.is_dir() and "left in place" in message
