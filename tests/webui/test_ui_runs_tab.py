"""Runs tab logic on a real SQLite runs database."""

from __future__ import annotations

import json

from memfactory.tracking.runs import RunsDB
from webui.tabs import runs as runs_tab


def test_runs_table_and_overlay(tmp_path):
    db = RunsDB(tmp_path / "runs" / "memfactory.db")
    a = db.create_run("preset_a", tmp_path / "runs" / "a", run_id="a", total_steps=3).id
    db.set_status(a, "running")
    for step, reward in enumerate([0.1, 0.4, 0.3], 1):
        db.log_metrics(a, step, {"reward/mean": reward, "loss": 1.0})
        db.update_progress(a, step, reward=reward)
    db.set_status(a, "finished")
    # run b has its metrics only in metrics.jsonl (not yet in the database)
    b_dir = tmp_path / "runs" / "b"
    b_dir.mkdir(parents=True)
    (b_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in (1, 2)))
    db.create_run("preset_b", b_dir, run_id="b")

    table = runs_tab.runs_table(db)
    assert list(table.columns) == runs_tab.COLUMNS
    row = table.set_index("run").loc["a"]
    assert row["status"] == "finished" and row["steps"] == "3/3" and row["preset"] == "preset_a"
    assert row["best reward"] == 0.4 and row["last reward"] == 0.3
    assert table.set_index("run").loc["b", "status"] == "created"

    fig = runs_tab.overlay(db, ["a", "b"])
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [0.1, 0.4, 0.3] and list(fig.data[1].x) == [1, 2]
    assert "no runs" in " ".join(x.text for x in runs_tab.overlay(db, []).layout.annotations)


def test_dead_trainer_is_marked_failed_on_refresh(tmp_path):
    db = RunsDB(tmp_path / "memfactory.db")
    run = db.create_run("p", tmp_path / "r", run_id="dead").id
    db.set_status(run, "running", pid=2**22 + 12345)  # no such process
    assert runs_tab.runs_table(db).set_index("run").loc["dead", "status"] == "failed"


def test_run_details_figures_and_log(tmp_path):
    db = RunsDB(tmp_path / "memfactory.db")
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    run = db.create_run("p", run_dir, run_id="r1").id
    db.log_metrics(run, 1, {"reward/mean": 0.2, "reward/std": 0.1, "loss": 0.5, "kl": 0.0, "clip_ratio": 0.1,
                            "response_length/mean": 12.0})
    (run_dir / "samples.jsonl").write_text(json.dumps({"step": 1, "rewards": [[0.0, 1.0], [0.5, 0.5]]}) + "\n")
    (run_dir / "stdout.log").write_text("loading\nstep 1/1 reward 0.2\n")
    db.set_status(run, "failed", error="boom")
    figures, log = runs_tab.run_details(db, "r1")
    assert set(figures) == {"reward", "distribution", "loss", "kl", "length", "clip"}
    assert sorted(figures["distribution"].data[0].y) == [0.0, 0.5, 0.5, 1.0]
    assert figures["length"].data[0].y[0] == 12.0
    assert "step 1/1" in log and "boom" in log
    empty, log = runs_tab.run_details(db, None)
    assert log == "" and all("no data yet" in f.layout.annotations[0].text for f in empty.values())
