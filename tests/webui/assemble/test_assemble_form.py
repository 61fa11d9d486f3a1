"""The Assemble form as data (webui.assemble.form): schema -> fields, widgets -> preset, problems -> widgets,
preset -> widgets."""

from __future__ import annotations

import pytest
import yaml

from memfactory.backends.sources import SMOLLM2
from memfactory.config import ModelConfig, parse_preset
from webui.assemble.form import assemble, build_form, check, problem_fields, problems_markdown, slot_key, to_values


def test_form_follows_the_registry(registered):
    form = build_form()
    assert form.agents["uit_agent"] == {"mem": ["uit_a", "uit_b"], "aux": ["uit_b"]}
    keys = [f.key for f in form.fields]
    assert slot_key("uit_agent", "mem") in keys and "module:uit_agent:mem:uit_a.size" in keys
    assert "env:uit_env.data" in keys and "reward_on:uit_reward" in keys
    assert "uit_backend" in form.fields[form.index("model.backend")].spec.choices
    assert "smollm2-135m-instruct" in form.fields[form.index("model.path")].spec.choices


def test_assemble_builds_a_valid_preset(uit_values):
    form = build_form()
    values = uit_values(form, **{"name": "t1", slot_key("uit_agent", "mem"): "uit_a",
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


def test_problems_point_at_their_widgets(uit_values):
    form = build_form()
    values = uit_values(form, **{"name": "t2", "trainer.steps": 0, "module:uit_agent:mem:uit_a.size": 0,
                                  "trainer.lora": "{r: 0}"})
    _, preset, problems = check(form, values)
    assert preset is None
    paths = dict(problems)
    assert "trainer.steps" in paths and "greater than or equal to 1" in paths["trainer.steps"]
    marks = problem_fields(form, values, problems)
    assert form.index("trainer.steps") in marks
    assert form.index("module:uit_agent:mem:uit_a.size") in marks
    assert form.index("trainer.lora") in marks  # trainer.lora.r lands on the YAML box holding it
    unknown = uit_values(form, **{"env.type": "uit_evn"})
    _, _, problems = check(form, unknown)
    assert any(p == "env.type" and "uit_env" in m for p, m in problems)  # did-you-mean from the registry
    assert form.index("env.type") in problem_fields(form, unknown, problems)


def test_round_trip_through_a_saved_preset(uit_values):
    form = build_form()
    values = uit_values(form, **{"name": "t3", slot_key("uit_agent", "mem"): "uit_b",
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


def test_every_registered_agent_and_env_assembles_from_defaults(values_for):
    """With the real registry: picking any agent/env and leaving the forms at their defaults is valid."""
    form = build_form()
    if not form.agents or not form.envs:
        pytest.skip(f"nothing to assemble yet: empty kinds {form.empty_kinds}")
    for agent in form.agents:
        for env in form.envs:
            values = values_for(form, **{"agent": agent, "env.type": env})
            data, preset, problems = check(form, values)
            assert problems == [], (agent, env, problems)
            assert preset.agent == agent and preset.env.type == env
            assert set(data["modules"]) == set(form.agents[agent])


def test_a_new_form_starts_from_smollm2_but_presets_keep_the_schema_default():
    """A newcomer's form names the real embedded model; a preset that omits model.path still means the
    schema's default (the tiny test model), in the form and in the YAML it writes."""

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


def test_problems_are_listed_beside_the_preview():
    assert problems_markdown([]) == "✅ The preset is valid."
    text = problems_markdown([("trainer.steps", "must be >= 1"), ("", "agent is required")])
    assert text.startswith("❌ **Invalid preset**")
    assert "- `trainer.steps`: must be >= 1" in text and "- `(top level)`: agent is required" in text
    assert problems_markdown([], "zh") != problems_markdown([], "en")
