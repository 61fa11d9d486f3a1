"""Preset validation: every problem named with its field path, misspellings get a hint."""

from pathlib import Path

import pytest
import yaml

from memfactory.config import apply_override, load_preset, parse_preset, save_preset
from memfactory.errors import ConfigError
from memfactory.paths import presets_dir


def minimal() -> dict:
    return {
        "name": "t",
        "agent": "direct",
        "model": {"backend": "hf", "path": "tiny://qwen3-mini"},
        "env": {"type": "long_context", "data": "synthetic://docqa?n=8"},
        "rewards": {"sub_em": 1.0},
        "trainer": {"steps": 2, "group_size": 2, "batch_size": 2},
    }


def problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_preset(data, "p.yaml")
    return info.value.problems


def test_minimal_preset_parses_with_defaults():
    preset = parse_preset(minimal())
    assert preset.trainer.lr > 0
    assert preset.logging.swanlab in {"offline", "local", "disabled", "cloud"}


def test_unknown_key_named_with_path_and_hint():
    data = minimal()
    data["trainer"]["learning_rate"] = 1e-4
    data["trainer"]["grup_size"] = 4
    found = dict(problems(data))
    assert "trainer.learning_rate" in found and "unknown key" in found["trainer.learning_rate"]
    assert "did you mean 'group_size'" in found["trainer.grup_size"]


def test_wrong_type_named_with_path():
    data = minimal()
    data["trainer"]["steps"] = "many"
    found = dict(problems(data))
    assert "trainer.steps" in found
    assert "integer" in found["trainer.steps"]


def test_misspelt_registry_names_suggest_the_closest():
    data = minimal()
    data["agent"] = "memagnet"
    data["rewards"] = {"sub_emm": 1.0}
    data["model"]["backend"] = "hff"
    found = dict(problems(data))
    assert "Did you mean 'memagent'?" in found["agent"]
    assert "Did you mean 'sub_em'?" in found["rewards.sub_emm"]
    assert "Did you mean 'hf'?" in found["model.backend"]


def test_module_options_checked_against_the_module_schema():
    data = minimal()
    data["agent"] = "memagent"
    data["modules"] = {"memory": {"type": "recurrent", "chunk_tokens": "big", "chunk_tokns": 3}}
    found = dict(problems(data))
    assert "modules.memory.chunk_tokens" in found
    assert "did you mean 'chunk_tokens'" in found["modules.memory.chunk_tokns"]


def test_missing_slot_is_reported():
    data = minimal()
    data["agent"] = "memagent"
    found = dict(problems(data))
    assert "modules.memory" in found


def test_malformed_yaml_names_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nagent: [direct\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_preset(path)
    assert "malformed YAML" in str(info.value)
    assert "line" in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_preset(tmp_path / "nope.yaml")


def test_yaml_is_data_not_code(tmp_path: Path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_preset(path)


def test_round_trip(tmp_path: Path):
    preset = parse_preset(minimal())
    path = save_preset(preset, tmp_path / "p.yaml")
    again = load_preset(path)
    assert again == preset
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(preset.to_yaml())


def test_overrides_parse_values_as_yaml():
    data = apply_override(minimal(), "trainer.lr=3e-4")
    data = apply_override(data, "trainer.lora.r=8")
    preset = parse_preset(data)
    assert preset.trainer.lr == pytest.approx(3e-4)
    assert preset.trainer.lora is not None and preset.trainer.lora.r == 8
    with pytest.raises(ConfigError):
        apply_override(data, "no-equals-sign")


@pytest.mark.parametrize("path", sorted(presets_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates(path: Path):
    load_preset(path)


def test_backend_options_checked_against_the_backend_schema():
    data = minimal()
    data["model"] = {"backend": "openai", "path": "m", "base_url": "http://127.0.0.1:1/v1",
                     "options": {"timeout": 5, "concurency": 2}}
    found = dict(problems(data))
    assert "model.options.concurency" in found
    assert "did you mean 'concurrency'" in found["model.options.concurency"]
    data["model"]["options"] = {"timeout": 5}
    assert parse_preset(data).model.options == {"timeout": 5}


def test_llm_judge_needs_a_judge_model():
    data = minimal()
    data["rewards"] = {"llm_judge": 1.0}
    assert "judge" in dict(problems(data))
