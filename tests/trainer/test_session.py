"""Runs end to end through the CLI: run folder, runs DB, abort, SIGKILL + resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from memfactory.cli import main
from memfactory.paths import presets_dir
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import read_records
from memfactory.tracking.runs import RunsDB
from memfactory.tracking.view import seconds_per_step

PRESET = str(presets_dir() / "tiny_test.yaml")


def run_cli(*args: str) -> int:
    return main(list(args))


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_train_writes_run_folder_and_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", PRESET, "--run-id", "r1", "--no-progress") == 0
    run_dir = tmp_path / "runs" / "r1"
    for name in ("preset.yaml", "metrics.jsonl", "samples.jsonl", "stdout.log"):
        assert (run_dir / name).is_file(), name
    assert metrics_steps(run_dir) == [1, 2, 3]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert all(len(group) == 4 for s in samples for group in s["rewards"])  # raw group rewards every step
    assert samples[0]["samples"] and "answer" in samples[0]["samples"][0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    record = RunsDB(tmp_path / "runs" / "memfactory.db").require("r1")
    assert record.status == "finished" and record.step == 3 and record.total_steps == 3
    assert record.meta["attn_implementation"] in {"sdpa", "eager"}
    metrics = read_records(run_dir / "metrics.jsonl")  # the one per-step store
    assert [m[keys.STEP] for m in metrics] == [1, 2, 3] and keys.REWARD_MEAN in metrics[0]
    # hardware figures every step; the run keeps its largest device peak (here the peak RSS)
    assert min(m[keys.hw_key(0, keys.HW_RSS)] for m in metrics) > 0.1
    assert min(m[keys.hw_key(0, keys.HW_CPU)] for m in metrics) >= 0
    peak = max(m[keys.HW_PEAK_GIB] for m in metrics)
    assert record.peak_gib == peak >= max(m[keys.hw_key(0, keys.HW_PEAK_RSS)] for m in metrics) - 1e-6
    # the row's summary of the steps: last/best reward and the trainer's own step time; done, so no time left
    assert record.last_reward == metrics[-1][keys.REWARD_MEAN]
    assert record.best_reward == max(m[keys.REWARD_MEAN] for m in metrics)
    assert record.seconds_per_step == seconds_per_step(metrics) > 0 and record.eta_s == 0.0  # same records


def test_bad_input_exits_2_with_a_readable_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(PRESET).read_text().replace("agent: direct", "agent: direkt"))
    assert run_cli("train", str(bad)) == 2
    err = capsys.readouterr().err
    assert "agent: unknown agent 'direkt'. Did you mean 'direct'?" in err
    assert "Traceback" not in err
    assert run_cli("train", PRESET, "--set", "trainer.steps=zero") == 2
    assert "trainer.steps" in capsys.readouterr().err
    assert run_cli("train", PRESET, "--resume", "no-such-run") == 2
    assert not (tmp_path / "runs").exists() or not any(p.is_dir() for p in (tmp_path / "runs").iterdir())


def spawn_train(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "memfactory", "train", PRESET, "--no-progress", *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_sigkill_mid_training_then_resume_keeps_metrics_continuous(tmp_path):
    overrides = ["--set", "trainer.steps=400", "--set", "trainer.save_every=3"]
    proc = spawn_train(tmp_path, "--run-id", "k1", *overrides)
    run_dir = tmp_path / "runs" / "k1"
    wait_for(lambda: (run_dir / "checkpoints" / "step-000006").is_dir())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    db = RunsDB(tmp_path / "runs" / "memfactory.db")
    assert db.reconcile() == ["k1"]
    assert db.require("k1").status == "failed"
    killed_at = metrics_steps(run_dir)[-1]
    assert killed_at >= 6
    resumed = spawn_train(tmp_path, "--resume", "k1", "--set", "trainer.steps=12", "--set", "trainer.save_every=3")
    assert resumed.wait(timeout=300) == 0
    steps = metrics_steps(run_dir)
    assert steps == list(range(1, 13)), steps
    record = db.require("k1")
    assert record.status == "finished" and record.step == 12


def test_sigterm_marks_the_run_aborted(tmp_path):
    proc = spawn_train(tmp_path, "--run-id", "a1", "--set", "trainer.steps=400")
    run_dir = tmp_path / "runs" / "a1"
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and metrics_steps(run_dir))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    record = RunsDB(tmp_path / "runs" / "memfactory.db").require("a1")
    assert record.status == "aborted"
    assert "SIGTERM" in (record.error or "")
