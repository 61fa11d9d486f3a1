"""Bad vLLM settings are refused before a run exists: one error naming the field and the fix, and no
row in the runs database (the checks of memfactory/preflight.py's vllm_problems)."""

from __future__ import annotations

import pytest

from memfactory.backends.shape import TEMPLATE_TOKENS
from memfactory.backends.vllm_engine import vllm_available
from memfactory.config import load_preset
from memfactory.errors import ConfigError
from memfactory.paths import presets_dir
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.session import TrainingSession


def refused(tmp_path, monkeypatch, preset_name: str, *overrides: str) -> dict[str, str]:
    """The problems TrainingSession raises for the preset, after checking no run was recorded."""
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / f"{preset_name}.yaml", ["logging.swanlab=disabled", *overrides])
    with pytest.raises(ConfigError) as info:
        TrainingSession(preset)
    db = tmp_path / preset.logging.runs_db
    assert not db.exists() or RunsDB(db).list_runs() == []
    assert not (tmp_path / preset.logging.runs_dir).exists() or not any((tmp_path / preset.logging.runs_dir).iterdir())
    return dict(info.value.problems)


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_asked_for_where_it_is_missing(tmp_path, monkeypatch):
    problems = refused(tmp_path, monkeypatch, "tiny_test", "trainer.rollout.engine=vllm")
    assert "run `make vllm`" in problems["trainer.rollout.engine"]


# the demo's longest call: its context window plus the template allowance, plus its answer cap
DEMO = load_preset(presets_dir() / "tiny_cpu_demo.yaml")
DEMO_LONGEST = int(DEMO.agent_options["max_context_tokens"]) + TEMPLATE_TOKENS + DEMO.trainer.max_new_tokens


@pytest.mark.parametrize("field,setting,words", [
    ("trainer.rollout.options.max_model_len", "{max_model_len: 256}",
     ["shorter than the preset's longest", f"at least {DEMO_LONGEST}"]),
    ("trainer.rollout.options.kv_cache_gib", "{kv_cache_gib: 0.01}", ["KV pool", "raise trainer.rollout.options.kv_cache_gib"]),
])
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")
def test_engine_settings_that_cannot_serve_the_preset(tmp_path, monkeypatch, field, setting, words):
    problems = refused(tmp_path, monkeypatch, "tiny_cpu_demo", "trainer.rollout.engine=vllm",
                       f"trainer.rollout.options={setting}")
    assert field in problems and all(w in problems[field] for w in words), problems


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")
def test_a_model_vllm_cannot_run(tmp_path, monkeypatch):
    problems = refused(tmp_path, monkeypatch, "tiny_test", "trainer.rollout.engine=vllm")  # head_dim 16
    assert "head_dim 16" in problems["model.path"] and "hf" in problems["model.path"]
