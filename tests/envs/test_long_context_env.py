"""LongContextEnv: sources, train/test split, eval sets, preset validation and building."""

from __future__ import annotations

import json

import pytest

from memfactory.config import parse_preset
from memfactory.envs.build import build_env
from memfactory.envs.long_context import LongContextEnv, LongContextOptions
from memfactory.errors import ConfigError, DataError
from memfactory.registry import REGISTRY
from memfactory.types import Trajectory


def make_env(**options) -> LongContextEnv:
    return LongContextEnv(LongContextOptions(**options), {}, {})


def test_registered_with_schema():
    entry = REGISTRY.get("env", "long_context")
    assert entry.target is LongContextEnv and entry.config is LongContextOptions


def test_train_and_test_are_disjoint_and_cover_the_source():
    env = make_env(data="synthetic://docqa?n=40&seed=0", test_fraction=0.25)
    train, test = env.samples("train"), env.samples("test")
    assert len(train) == 30 and len(test) == 10
    assert not {s.id for s in train} & {s.id for s in test}
    assert {s.id for s in train} | {s.id for s in test} == {f"synthetic_docqa-{i}" for i in range(40)}
    # stable across calls and instances
    assert [s.id for s in make_env(data="synthetic://docqa?n=40&seed=0", test_fraction=0.25).samples("test")] == [
        s.id for s in test
    ]
    assert len(make_env(data="synthetic://docqa?n=40", test_fraction=0.0).samples("train")) == 40


def test_train_size_keeps_the_first_training_samples_and_the_same_test_split():
    full = make_env(data="synthetic://docqa?n=40&seed=0", test_fraction=0.25)
    small = make_env(data="synthetic://docqa?n=40&seed=0", test_fraction=0.25, train_size=7)
    assert [s.id for s in small.samples("train")] == [s.id for s in full.samples("train")][:7]
    assert [s.id for s in small.samples("test")] == [s.id for s in full.samples("test")]


def test_synthetic_kinds():
    hot = make_env(data="synthetic://hotpotqa?n=8&docs=20").samples("train")
    assert all(s.meta["num_docs"] == 20 for s in hot)
    fwe = make_env(data="synthetic://fwe?n=8&length=512").samples("train")
    assert all(s.meta["metric"] == "string_match_all" and len(s.answers) == 3 for s in fwe)


def test_eval_sets_from_data_dir_and_assets(tmp_path):
    record = {"context": "Document 1:\nA\nalpha", "input": "q?", "answers": ["a"], "num_docs": 1, "index": 0}
    (tmp_path / "eval_50.json").write_text(json.dumps([record] * 5), encoding="utf-8")
    env = make_env(data_dir=str(tmp_path), eval=["eval_50", "eval_docqa"], eval_size=3)
    assert len(env.samples("eval_50")) == 3
    docqa = env.samples("eval_docqa")  # shipped in assets/data
    assert len(docqa) == 3 and docqa[0].id == "eval_docqa-0"
    assert len(make_env().samples("eval_docqa")) == 32
    assert len(env.samples("synthetic://docqa?n=5&seed=9")) == 3
    with pytest.raises(DataError, match="long-context QA set not found"):
        env.samples("eval_100")


def test_file_source_and_bad_options(tmp_path):
    record = {"context": "c", "input": "q", "answers": ["a"], "num_docs": 1}
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({**record, "index": i}) for i in range(8)), encoding="utf-8")
    env = make_env(data=str(path), test_fraction=0.5)
    assert len(env.samples("train")) == 4
    with pytest.raises(DataError, match="file not found"):
        make_env(data=str(tmp_path / "missing.json")).samples("train")
    with pytest.raises(DataError, match="no training samples"):
        make_env(data="synthetic://docqa?n=1", test_fraction=0.5).samples("train")
    with pytest.raises(ValueError):
        LongContextOptions(datta="x")


def preset(env: dict, rewards: dict | None = None) -> dict:
    return {
        "name": "t",
        "agent": next(iter(REGISTRY.names("agent")), "memagent"),
        "env": env,
        "rewards": rewards or {"sub_em": 1.0, "format": 0.1},
    }


def test_preset_builds_env_with_weighted_rewards():
    if not REGISTRY.names("agent"):
        pytest.skip("no agent registered yet")
    data = preset({"type": "long_context", "data": "synthetic://docqa?n=16", "eval": ["eval_docqa"]})
    try:
        p = parse_preset(data)
    except ConfigError as exc:  # only our env's section must be valid here
        assert not [x for x in exc.problems if x[0].startswith(("env", "rewards"))], exc.problems
        return
    env = build_env(p)
    assert isinstance(env, LongContextEnv) and set(env.rewards) == {"sub_em", "format"}
    trajectories = [Trajectory(sample=s, answer="\\boxed{" + s.answers[0] + "}") for s in env.samples("test")]
    env.score(trajectories)
    assert all(t.reward == pytest.approx(1.1) for t in trajectories)


def test_preset_env_typo_is_reported():
    data = preset({"type": "long_context", "dta": "x"})
    with pytest.raises(ConfigError) as info:
        parse_preset(data)
    assert any(path == "env.dta" and "did you mean 'data'" in message for path, message in info.value.problems)


def test_llm_judge_reward_needs_a_judge_when_built(tiny_backend):
    from memfactory.envs.build import build_rewards
    from memfactory.errors import MemFactoryError

    with pytest.raises(MemFactoryError, match="needs a judge backend"):
        build_rewards({"llm_judge": 1.0})
    rewards = build_rewards({"llm_judge": 1.0, "sub_em": 0.5}, judge=tiny_backend)
    assert rewards["llm_judge"].judge is tiny_backend
