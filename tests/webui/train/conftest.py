"""Fixtures of the Train tab's tests: a workspace with tiny presets, and waiting for a state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from memfactory.paths import presets_dir


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """A workspace with ``tiny`` (tiny_test) and ``nodata`` (its data file missing) presets."""
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    (tmp_path / "presets").mkdir()
    (tmp_path / "runs").mkdir()
    data = yaml.safe_load((presets_dir() / "tiny_test.yaml").read_text())
    (tmp_path / "presets" / "tiny.yaml").write_text(yaml.safe_dump(data))
    data["env"]["data"] = str(tmp_path / "no-such-data.jsonl")
    (tmp_path / "presets" / "nodata.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.fixture()
def tiny_preset(ws) -> Callable[..., str]:
    """``tiny_preset(name, **trainer)``: tiny_test under another name with trainer fields changed."""

    def make(name: str, **trainer: Any) -> str:
        data = yaml.safe_load((presets_dir() / "tiny_test.yaml").read_text())
        data["name"] = name
        data["trainer"].update(trainer)
        (ws / "presets" / f"{name}.yaml").write_text(yaml.safe_dump(data))
        return name

    return make
