"""Helpers shared by the hardening tests: launch real ``memfactory train`` subprocesses and read
what they leave behind (metrics.jsonl, samples.jsonl, stdout.log, checkpoints, the runs DB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from memfactory.paths import presets_dir, project_root
from memfactory.tracking.metrics import read_metrics
from tests.waiting import wait_until

PRESET = str(presets_dir() / "tiny_test.yaml")
ENTRY = str(Path(__file__).with_name("train_entry.py"))
# every step trains (see train_entry.py), a checkpoint every step, the two newest kept
TRAINING = ["--set", "rewards={test_vowel_share: 1.0}", "--set", "trainer.save_every=1",
            "--set", "trainer.keep_checkpoints=2", "--no-progress"]
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng.pt", "model/model.safetensors")


def train_command(*args: str) -> list[str]:
    """The real CLI (``memfactory.cli.main`` behind train_entry.py), one thread."""
    return [sys.executable, ENTRY, "train", PRESET, *TRAINING, *args]


def train_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """One thread (two cores are shared) and the project importable from any working folder."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(project_root()),
            **(extra or {})}


def spawn(cwd: Path, *args: str, env: dict[str, str] | None = None,
          stderr: int | None = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(train_command(*args), cwd=cwd, env=train_env(env), stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` every 5 ms (the awaited moments are short); fail if ``proc`` exits first or the
    timeout passes."""
    if wait_until(predicate, timeout, every=0.005, proc=proc) is None:
        raise AssertionError("timed out waiting")


def jsonl_steps(path: Path) -> list[int]:
    """The steps of a run's metrics/samples file; a line still being written is not counted."""
    return [record["step"] for record in read_metrics(path).records]


def jsonl_records(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def missing_files(checkpoint: Path) -> list[str]:
    """Files a complete checkpoint of the tiny full model must hold but ``checkpoint`` lacks."""
    return [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
