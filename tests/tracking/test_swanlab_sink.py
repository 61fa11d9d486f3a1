"""SwanLab sink with the installed swanlab: offline files, no login, failures never raise."""

from __future__ import annotations

import logging

import pytest

from memfactory.errors import MemFactoryError
from memfactory.tracking.swanlab_sink import SwanLabSink


@pytest.fixture(autouse=True)
def _no_swanlab_key(monkeypatch, tmp_path):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab_root"))  # keep ~/.swanlab untouched


@pytest.mark.parametrize("mode", ["offline", "local"])
def test_offline_and_local_write_run_files_under_the_logdir(tmp_path, mode):
    logdir = tmp_path / "run" / "swanlog"
    sink = SwanLabSink(mode, "memfactory-tests", "tiny-run", {"trainer": {"lr": 1e-4, "steps": 3}}, logdir)
    assert sink.active, sink.error
    for step in range(3):
        sink.log(step, {"train/loss": 1.0 / (step + 1), "reward_mean": 0.25 * step, "note": "skip", "bad": None})
    sink.finish()
    sink.finish()  # twice is fine
    assert not sink.active

    (run_folder,) = [p for p in logdir.iterdir() if p.is_dir() and p.name.startswith("run-")]
    (data_file,) = run_folder.glob("*.swanlab")
    payload = data_file.read_bytes()
    assert b"train/loss" in payload and b"reward_mean" in payload and b"note" not in payload
    config = (run_folder / "files" / "config.yaml").read_text()
    assert "trainer" in config and "lr" in config
    assert not list(tmp_path.glob("swanlog"))  # nothing written to the working directory's default


def test_disabled_does_nothing(tmp_path):
    sink = SwanLabSink("disabled", "p", "n", {}, tmp_path / "swanlog")
    sink.log(1, {"loss": 1.0})
    sink.finish()
    assert not sink.active and not (tmp_path / "swanlog").exists()


def test_cloud_without_api_key_is_a_clear_user_error(tmp_path):
    with pytest.raises(MemFactoryError, match="SWANLAB_API_KEY"):
        SwanLabSink("cloud", "p", "n", {}, tmp_path / "swanlog")
    with pytest.raises(MemFactoryError, match="must be one of"):
        SwanLabSink("online-ish", "p", "n", {}, tmp_path / "swanlog")


def test_a_failing_init_warns_and_training_continues(tmp_path, caplog):
    not_a_dir = tmp_path / "swanlog"
    not_a_dir.write_text("a file where the log folder should be")
    with caplog.at_level(logging.WARNING, logger="memfactory.tracking.swanlab_sink"):
        sink = SwanLabSink("offline", "p", "n", {"a": 1}, not_a_dir)
    assert not sink.active and "could not start" in sink.error
    assert any("training continues" in r.getMessage() for r in caplog.records)
    sink.log(1, {"loss": 1.0})  # a no-op, not an exception
    sink.finish()
