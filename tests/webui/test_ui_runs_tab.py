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
