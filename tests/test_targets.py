"""What to run: preset files or models, one set of checkpoint rules, the model swaps (checkpoint,
another base model, an endpoint) and memfactory eval's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfactory.config import ModelConfig, load_preset, parse_preset
from memfactory.errors import MemFactoryError
from memfactory.export import run_checkpoint
from memfactory.paths import presets_dir
from memfactory.targets import (
    Checkpoint,
    Endpoint,
    direct_preset,
    endpoint_preset,
    make_rows,
    model_problem,
    resolve_checkpoint,
    resolve_target,
    with_checkpoint,
    with_model,
    without_chunk_cap,
    workflow_preset,
)
from memfactory.tracking.runs import RunsDB

TINY_PRESET = presets_dir() / "memagent_tiny_test.yaml"


# --------------------------------------------------------------------------- targets and rows


def test_rows_pair_checkpoints_with_targets(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    rows = make_rows([str(TINY_PRESET), str(TINY_PRESET)], ["none", str(weights)])
    assert rows[0].checkpoint is None and rows[0].label == "memagent_tiny_test"
    assert rows[1].checkpoint == str(weights) and rows[1].label == f"memagent_tiny_test + {weights}"
    same = make_rows([str(TINY_PRESET), str(TINY_PRESET)])
    assert [r.label for r in same] == ["memagent_tiny_test", "memagent_tiny_test #2"]
    with pytest.raises(MemFactoryError, match="--checkpoint"):
        make_rows([str(TINY_PRESET)], ["a", "b"])


def test_default_preset_for_a_bare_model_and_no_chunk_cap():
    (row,) = make_rows(["tiny://qwen3-mini"], overrides=["modules.memory.chunk_tokens=64"])
    assert row.preset.agent == "memagent" and row.preset.model.path == "tiny://qwen3-mini"
    assert row.preset.modules["memory"].options["chunk_tokens"] == 64
    capped = load_preset(TINY_PRESET)
    assert capped.modules["memory"].options["max_chunks"] == 3
    assert "max_chunks" not in without_chunk_cap(capped).modules["memory"].options
    with pytest.raises(MemFactoryError, match="unknown model"):
        make_rows(["no-such-model"])


def test_a_model_is_checked_by_the_loaders_own_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert model_problem("tiny://qwen3-mini") is None and model_problem("smollm2-135m-instruct") is None
    assert model_problem("Qwen/Qwen3-1.7B") is None  # a hub id is not looked up
    assert "unknown tiny model" in model_problem("tiny://nope")  # the loader's parse, not a second copy
    assert "not a hub id" in model_problem("./no/such/model")
    assert "hub id (owner/name)" in model_problem("my_preset")  # a misspelt preset, not a hub id
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in model_problem(str(tmp_path / "empty"))
    (tmp_path / "w.bin").write_bytes(b"x")
    assert model_problem(str(tmp_path / "w.bin")).startswith("is a file")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in model_problem("Qwen/Qwen3-1.7B")
    with pytest.raises(MemFactoryError, match="unknown model 'tiny://nope'"):
        resolve_target("tiny://nope")


# --------------------------------------------------------------------------- checkpoints


def _fake_checkpoint(run_dir: Path, step: int) -> Path:
    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    return ckpt / "model"


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    _fake_checkpoint(run_dir, 10)
    newest = _fake_checkpoint(run_dir, 20)
    (run_dir / "checkpoints" / "step-000030" / "model").mkdir(parents=True)  # incomplete: no trainer_state.json
    (run_dir / "preset.yaml").write_text(TINY_PRESET.read_text())
    db_path = tmp_path / "runs" / "memfactory.db"
    db = RunsDB(db_path)
    db.create_run("memagent_tiny_test", str(run_dir), run_id="r1")
    db.close()
    return run_dir, newest, db_path


def test_one_set_of_checkpoint_rules(run, tmp_path):
    run_dir, newest, db_path = run
    by_id = resolve_checkpoint("r1", db_path)
    assert by_id == Checkpoint(newest, newest.parent, run_dir, "r1") and by_id.step == 20
    assert resolve_checkpoint(str(run_dir), db_path) == Checkpoint(newest, newest.parent, run_dir)
    assert resolve_checkpoint(str(newest.parent), db_path) == Checkpoint(newest, newest.parent, run_dir)
    assert resolve_checkpoint(str(newest), db_path).path == newest.parent  # a step's model/ folder
    weights = tmp_path / "weights"
    weights.mkdir()
    bare = resolve_checkpoint(str(weights), db_path)
    assert bare == Checkpoint(weights) and not bare.is_adapter
    with pytest.raises(MemFactoryError, match="has no step"):
        _ = bare.step
    with pytest.raises(MemFactoryError, match="incomplete"):
        resolve_checkpoint(str(run_dir / "checkpoints" / "step-000030"), db_path)
    with pytest.raises(MemFactoryError, match="no run 'r2'"):
        resolve_checkpoint("r2", db_path)
    with pytest.raises(MemFactoryError, match="no runs database"):
        resolve_checkpoint("r1", tmp_path / "missing.db")
    empty = tmp_path / "runs" / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(MemFactoryError, match="run folder .* has no complete checkpoint"):
        resolve_checkpoint(str(empty), db_path)


def test_export_takes_the_same_rules_but_needs_a_run_checkpoint(run, tmp_path):
    _run_dir, newest, db_path = run
    assert run_checkpoint("r1", db_path).path == newest.parent
    (tmp_path / "weights").mkdir()
    with pytest.raises(MemFactoryError, match="neither a run folder .* nor a checkpoint folder"):
        run_checkpoint(str(tmp_path / "weights"), db_path)


# --------------------------------------------------------------------------- swapping the model


def test_with_checkpoint_and_with_model_on_presets_and_model_sections():
    preset = load_preset(TINY_PRESET)
    trained = with_checkpoint(preset, Path("/trained"))
    assert trained.model.checkpoint == "/trained" and trained.name == preset.name and preset.model.checkpoint is None
    assert with_checkpoint(trained, None).model.checkpoint is None
    section = with_checkpoint(ModelConfig(path="tiny://qwen3-mini"), "/x")
    assert isinstance(section, ModelConfig) and section.checkpoint == "/x"
    other = with_model(trained, "smollm2-135m-instruct")
    assert other.model.path == "smollm2-135m-instruct" and other.model.checkpoint is None  # trained on another model
    served = endpoint_preset(Endpoint("http://127.0.0.1:1/v1", "m", "K", {"timeout": 5}), trained)
    assert with_model(served, "tiny://qwen3-mini").model.options == {}  # the openai options do not carry over


def test_workflow_presets(run):
    _run_dir, newest, db_path = run
    preset = load_preset(TINY_PRESET)
    assert workflow_preset(preset, checkpoint="r1", runs_db=db_path).model.checkpoint == str(newest)
    swapped = workflow_preset(preset, model="tiny://qwen3-mini", checkpoint="r1", runs_db=db_path)
    assert swapped.model.path == "tiny://qwen3-mini" and swapped.model.checkpoint == str(newest)
    served = workflow_preset(None, endpoint=Endpoint("http://127.0.0.1:1/v1", "served"))
    assert served.agent == direct_preset().agent == "direct" and served.model.backend == "openai"
    assert served.model.api_key_env == "OPENAI_API_KEY" and served.model.path == "served"
    with pytest.raises(MemFactoryError, match="served model name"):
        workflow_preset(None, endpoint=Endpoint("http://127.0.0.1:1/v1", " "))
    with pytest.raises(MemFactoryError, match="a checkpoint applies to a local model"):
        workflow_preset(preset, endpoint=Endpoint("http://127.0.0.1:1/v1", "m"), checkpoint="r1")
    with pytest.raises(MemFactoryError, match="choose a preset"):
        workflow_preset(None)
    parse_preset(served.model_dump(mode="json", exclude_none=True))  # what it builds is a valid preset
