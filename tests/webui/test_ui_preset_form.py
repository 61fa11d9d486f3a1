"""The Assemble form's logic: schema -> fields, widgets -> preset, problems -> widgets, preset -> widgets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from memfactory.config import parse_preset
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY
from webui import workspace
from webui.forms import MISSING, field_specs, from_widget, values_to_dict
from webui.preset_form import assemble, build_form, check, problem_fields, slot_key, to_values
from webui.tabs import assemble as tab


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["a", "b"] = Field("a", description="which mode")
    flag: bool = True
    count: int = Field(3, ge=1, description="how many")
    ratio: float = 0.5
    label: str = "x"
    cap: int | None = Field(None, ge=1)
    tags: list[str] = Field(default_factory=lambda: ["p", "q"])
    needed: str = Field(description="must be given")


class ModA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(4, ge=1, description="size of A")


class ModB(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["x", "y"] = "x"


class EnvOpts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field("synthetic://x", description="where samples come from")
    eval: list[str] = Field(default_factory=list)


@pytest.fixture()
def registered():
    """Test components in the real registry (removed afterwards so other tests see the usual set)."""
    entries = [
        ("module", "uit_a", ModA, {}), ("module", "uit_b", ModB, {}),
        ("agent", "uit_agent", None, {"slots": {"mem": ["uit_a", "uit_b"], "aux": ["uit_b"]}}),
        ("env", "uit_env", EnvOpts, {}), ("reward", "uit_reward", None, {}), ("backend", "uit_backend", None, {}),
    ]
    for kind, name, config, meta in entries:
        REGISTRY.register(kind, name, description=f"test {kind}", config=config, **meta)(type(name, (), {}))
    yield
    for kind, name, _, _ in entries:
        REGISTRY._entries[kind].pop(name, None)


def test_field_specs_map_types_to_widgets():
    specs = {s.name: s for s in field_specs(Options)}
    assert specs["mode"].kind == "choice" and specs["mode"].choices == ("a", "b") and specs["mode"].info == "which mode"
    assert specs["flag"].kind == "bool" and specs["flag"].default is True
    assert specs["count"].kind == "int" and specs["count"].default == 3
    assert specs["ratio"].kind == "float"
    assert specs["label"].kind == "str" and specs["label"].default == "x"
    assert specs["cap"].kind == "int" and specs["cap"].optional and specs["cap"].default == ""
    assert specs["tags"].kind == "yaml" and yaml.safe_load(specs["tags"].default) == ["p", "q"]
    assert specs["needed"].required and "(required)" in specs["needed"].info


def test_widget_values_back_to_data():
    specs = field_specs(Options)
    values = ["b", False, 5.0, 0.5, "x", "", "[r]", "given"]
    data, problems = values_to_dict(specs, values)
    # defaults are left out (the schema supplies them); changed values are typed
    assert data == {"mode": "b", "flag": False, "count": 5, "tags": ["r"], "needed": "given"}
    assert problems == []
    assert Options.model_validate(data).count == 5
    spec = {s.name: s for s in specs}
    assert from_widget(spec["cap"], "7") == 7 and from_widget(spec["cap"], "") is None
    assert from_widget(spec["needed"], "") is MISSING
    _, problems = values_to_dict(specs, ["a", True, 3, 0.5, "x", "seven", "[unclosed", "n"])
    assert [p[0] for p in problems] == ["cap", "tags"]
    assert "expected a number" in problems[0][1] and "YAML" in problems[1][1]


def test_form_follows_the_registry(registered):
    form = build_form()
    assert form.agents["uit_agent"] == {"mem": ["uit_a", "uit_b"], "aux": ["uit_b"]}
    keys = [f.key for f in form.fields]
    assert slot_key("uit_agent", "mem") in keys and "module:uit_agent:mem:uit_a.size" in keys
    assert "env:uit_env.data" in keys and "reward_on:uit_reward" in keys
    assert "uit_backend" in form.fields[form.index("model.backend")].spec.choices
    assert "smollm2-135m-instruct" in form.fields[form.index("model.path")].spec.choices


def _values_for(form, **changes):
    values = form.defaults()
    for key, value in changes.items():
        values[form.index(key)] = value
    return values


def _uit_values(form, **changes):
    base = {"agent": "uit_agent", "env.type": "uit_env", "reward_on:uit_reward": True,
            **{f"reward_on:{r}": False for r in form.rewards if r != "uit_reward"}}
    return _values_for(form, **{**base, **changes})


def test_assemble_builds_a_valid_preset(registered):
    form = build_form()
    values = _uit_values(form, **{"name": "t1", slot_key("uit_agent", "mem"): "uit_a",
                                  "module:uit_agent:mem:uit_a.size": 9, "reward:uit_reward": 0.5,
                                  "trainer.steps": 3, "env:uit_env.eval": "[eval_50]"})
    data, preset, problems = check(form, values)
    assert problems == [], problems
    assert data["modules"] == {"mem": {"type": "uit_a", "size": 9}, "aux": {"type": "uit_b"}}
    assert data["env"] == {"type": "uit_env", "eval": ["eval_50"]}
    assert data["rewards"] == {"uit_reward": 0.5}
    assert preset.trainer.steps == 3 and preset.agent == "uit_agent"
    # options of the module not chosen for the slot are not part of the preset
    values[form.index("module:uit_agent:mem:uit_b.kind")] = "y"
    assert check(form, values)[0]["modules"]["mem"] == {"type": "uit_a", "size": 9}


def test_problems_point_at_their_widgets(registered):
    form = build_form()
    values = _uit_values(form, **{"name": "t2", "trainer.steps": 0, "module:uit_agent:mem:uit_a.size": 0,
                                  "trainer.lora": "{r: 0}"})
    _, preset, problems = check(form, values)
    assert preset is None
    paths = dict(problems)
    assert "trainer.steps" in paths and "greater than or equal to 1" in paths["trainer.steps"]
    marks = problem_fields(form, values, problems)
    assert form.index("trainer.steps") in marks
    assert form.index("module:uit_agent:mem:uit_a.size") in marks
    assert form.index("trainer.lora") in marks  # trainer.lora.r lands on the YAML box holding it
    unknown = _uit_values(form, **{"env.type": "uit_evn"})
    _, _, problems = check(form, unknown)
    assert any(p == "env.type" and "uit_env" in m for p, m in problems)  # did-you-mean from the registry
    assert form.index("env.type") in problem_fields(form, unknown, problems)


def test_round_trip_through_a_saved_preset(registered):
    form = build_form()
    values = _uit_values(form, **{"name": "t3", slot_key("uit_agent", "mem"): "uit_b",
                                  "module:uit_agent:mem:uit_b.kind": "y", "trainer.lr": 0.001,
                                  "trainer.epsilon_high": "0.28", "model.path": "smollm2-135m-instruct"})
    data, preset, problems = check(form, values)
    assert not problems
    reloaded = parse_preset(yaml.safe_load(preset.to_yaml()))
    back, notes = to_values(form, reloaded.model_dump(mode="json", exclude_none=True))
    assert notes == []
    assert back[form.index(slot_key("uit_agent", "mem"))] == "uit_b"
    assert back[form.index("module:uit_agent:mem:uit_b.kind")] == "y"
    assert back[form.index("trainer.epsilon_high")] == "0.28"
    assert assemble(form, back)[0] == data


def test_to_values_reports_what_the_form_cannot_show(registered):
    form = build_form()
    data = {"name": "t4", "agent": "nope", "env": {"type": "uit_env", "extra_key": 1}, "rewards": {"zzz": 1.0}}
    _, notes = to_values(form, data)
    text = "\n".join(notes)
    assert "env.extra_key" in text and "agent 'nope'" in text and "reward 'zzz'" in text


def test_save_and_load_in_the_workspace(registered, tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path))
    form = build_form()
    values = _uit_values(form, **{"name": "saved_one", "trainer.steps": 4})
    path, text = tab.save(form, values, "", False)
    assert path == tmp_path.resolve() / "presets" / "saved_one.yaml" and "steps: 4" in text
    with pytest.raises(MemFactoryError, match="already exists"):
        tab.save(form, values, "", False)
    tab.save(form, _uit_values(form, **{"name": "saved_one", "trainer.steps": 5}), "", True)
    with pytest.raises(MemFactoryError):
        tab.save(form, values, "../escape", True)
    with pytest.raises(MemFactoryError, match="invalid preset"):
        tab.save(form, _uit_values(form, **{"trainer.steps": 0}), "bad", False)
    assert not (tmp_path / "presets" / "bad.yaml").exists()
    loaded, notes, where = tab.load(form, "saved_one")
    assert where == path and notes == []
    assert loaded[form.index("trainer.steps")] == 5
    # a preset that no longer validates still loads, with its problems as notes
    (tmp_path / "presets" / "stale.yaml").write_text("name: stale\nagent: gone\nenv: {type: uit_env}\n")
    loaded, notes, _ = tab.load(form, "stale")
    assert any("gone" in note for note in notes) and loaded[form.index("name")] == "stale"
    assert "memfactory train presets/x.yaml" == tab.cli_command("x")
    assert tab.download_file("saved_one", text).endswith("saved_one.yaml")


def test_download_files_are_pruned(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths = [tab.download_file("p", f"name: p{i}\n") for i in range(205)]
    folders = list((tmp_path / "memfactory-ui").iterdir())
    assert len(folders) <= 201
    assert Path(paths[-1]).read_text() == "name: p204\n"
    assert tab.download_file("../x", "name: q\n").endswith("/preset.yaml")  # a bad name never becomes a path


def test_every_registered_agent_and_env_assembles_from_defaults():
    """With the real registry: picking any agent/env and leaving the forms at their defaults is valid."""
    form = build_form()
    if not form.agents or not form.envs:
        pytest.skip(f"nothing to assemble yet: empty kinds {form.empty_kinds}")
    for agent in form.agents:
        for env in form.envs:
            values = _values_for(form, **{"agent": agent, "env.type": env})
            data, preset, problems = check(form, values)
            assert problems == [], (agent, env, problems)
            assert preset.agent == agent and preset.env.type == env
            assert set(data["modules"]) == set(form.agents[agent])


def test_a_new_form_starts_from_smollm2_but_presets_keep_the_schema_default():
    """A newcomer's form names the real embedded model; a preset that omits model.path still means the
    schema's default (the tiny test model), in the form and in the YAML it writes."""
    from memfactory.backends.sources import SMOLLM2
    from memfactory.config import ModelConfig

    form = build_form()
    index = form.index("model.path")
    assert form.defaults()[index] == SMOLLM2 != ModelConfig().path
    assert form.fields[index].spec.choices[0] == SMOLLM2  # first suggestion too
    data, preset, problems = check(form, form.defaults())
    assert problems == [] and data["model"]["path"] == SMOLLM2 and preset.model.path == SMOLLM2
    # a loaded preset without model.path shows (and re-writes) the schema default, not the form's start
    values, notes = to_values(form, {"name": "p", "agent": "memagent", "env": {"type": "long_context"}})
    assert notes == [] and values[index] == ModelConfig().path
    again, _, problems = check(form, values)
    assert problems == [] and "path" not in again.get("model", {})
    assert parse_preset(again).model.path == ModelConfig().path
    # the tiny model chosen explicitly is the schema default: nothing to write
    tiny = list(form.defaults())
    tiny[index] = "tiny://qwen3-mini"
    assert check(form, tiny)[1].model.path == "tiny://qwen3-mini"


def test_assemble_plans_the_preview_and_reports_mistakes_in_place():
    """The Assemble tab's "Will it fit?" panel: the planner on the YAML preview, user mistakes as text."""
    from memfactory.paths import presets_dir
    from webui.tabs.assemble import plan_for_preview

    text = (presets_dir() / "memagent_qwen3_4b.yaml").read_text(encoding="utf-8")
    verdict = plan_for_preview(text, 1, "80")
    assert "not fit" in verdict.lower() or "does not fit" in verdict.lower(), verdict
    assert "fsdp" in verdict.lower() or "lora" in verdict.lower()  # names a knob to turn
    assert "fits" in plan_for_preview(text, 1, "141").lower()
    assert "must be a number" in plan_for_preview(text, 1, "lots")
    assert "Assemble a valid preset first" in plan_for_preview("", 1, "")
    assert "Cannot plan" in plan_for_preview("trainer: [unclosed\nx: 1\n", 1, "")
