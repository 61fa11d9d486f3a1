"""Registered answer rewards: prefixes, caps, golds, format, weighting, the LLM judge, eval-only metrics.

The pure metrics and extraction rules they use are tested in test_answer_metrics.py."""

from __future__ import annotations

import math

import pytest

from memfactory.envs.answer_metrics import MAX_BOXED_CHARS, normalize_answer
from memfactory.envs.base import Reward
from memfactory.envs.rewards import LLMJudge, parse_verdict
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY
from memfactory.types import Generation, Sample, Trajectory


def traj(answer: str, gold: list[str] | str = "Paris", question: str = "Where?") -> Trajectory:
    golds = [gold] if isinstance(gold, str) else gold
    return Trajectory(sample=Sample(id="s", question=question, answers=golds), answer=answer)


def score(name: str, answer: str, gold: list[str] | str = "Paris") -> float:
    reward = REGISTRY.get("reward", name).target()
    return reward.score([traj(answer, gold)])[0]


# --------------------------------------------------------------------------- registered rewards


def test_rewards_registered_and_are_reward_subclasses():
    for name in ("em", "sub_em", "f1", "string_match_all", "format", "llm_judge"):
        assert issubclass(REGISTRY.get("reward", name).target, Reward)


def test_assistant_prefix_answer_scores():
    # the answer text includes the assistant prefix that opened the turn
    assert score("sub_em", r"\boxed{Paris}") == 1.0
    assert score("em", r"\boxed{the Paris}") == 1.0
    assert score("sub_em", r"\boxed{Rome}") == 0.0
    assert score("format", r"\boxed{Paris}") == 1.0


def test_boxing_the_whole_document_cannot_win():
    document = "\\boxed{" + "Alice lives in Paris. Bob lives in Rome. Carol lives in Oslo.}"
    assert len(document) > MAX_BOXED_CHARS
    assert score("sub_em", document) == 0.0
    assert score("format", document) == 0.0
    assert score("sub_em", "\\boxed{" + "Paris" + " " * 60 + "}") == 1.0  # padding is stripped


def test_unclosed_and_empty_predictions_score_zero():
    for name in ("em", "sub_em", "f1", "string_match_all", "format"):
        assert score(name, "") == 0.0
        assert score(name, r"\boxed{Paris") == 0.0
        assert score(name, "<think>Paris") == 0.0
        assert score(name, r"\boxed{}") == 0.0


def test_best_over_golds_and_string_match_all_reward():
    assert score("em", "NYC", ["New York", "NYC"]) == 1.0
    assert score("f1", "New York", ["New York City"]) == pytest.approx(0.8)
    assert score("string_match_all", "aaaaaa bbbbbb", ["aaaaaa", "bbbbbb", "cccccc", "dddddd"]) == 0.5
    assert score("sub_em", "Blah blah. The answer is Paris.", "Paris") == 1.0


def test_format_reward():
    assert score("format", "Paris") == 0.0
    assert score("format", r"<think>x</think>\boxed{ Paris }") == 1.0
    assert score("format", r"\boxed{ }") == 0.0


def test_environment_combines_weighted_parts():
    from memfactory.envs.long_context import LongContextEnv, LongContextOptions

    rewards = {n: REGISTRY.get("reward", n).target() for n in ("sub_em", "format")}
    env = LongContextEnv(LongContextOptions(), rewards, {"sub_em": 1.0, "format": 0.1})
    trajectories = [traj(r"\boxed{Paris}"), traj("Paris"), traj(r"\boxed{Rome}")]
    env.score(trajectories)
    assert [t.rewards for t in trajectories] == [
        {"sub_em": 1.0, "format": 1.0},
        {"sub_em": 1.0, "format": 0.0},
        {"sub_em": 0.0, "format": 1.0},
    ]
    assert [t.reward for t in trajectories] == pytest.approx([1.1, 1.0, 0.1])


# --------------------------------------------------------------------------- LLM judge


class RuleJudgeBackend:
    """A real, deterministic Backend: it reads the judge prompt and answers True when the normalised
    prediction equals the gold (it is a rule-based judge, not a mock: it implements the protocol)."""

    name = "rule-judge"
    exposes_tokens = False

    def __init__(self, fail_first: int = 0, reply: str | None = None):
        self.calls = 0
        self.fail_first = fail_first
        self.reply = reply
        self.prompts: list[str] = []

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("judge server unreachable")
        out = []
        for prompt in prompts:
            text = prompt.messages[-1]["content"]
            self.prompts.append(text)
            fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            verdict = normalize_answer(fields["Gold answer"]) == normalize_answer(fields["Predicted answer"])
            out.append(Generation(text=self.reply if self.reply is not None else f"{verdict}."))
        return out


def test_parse_verdict():
    assert parse_verdict("True.") is True
    assert parse_verdict("  false") is False
    assert parse_verdict("<think>true?</think> False") is False
    assert parse_verdict("maybe") is None
    assert parse_verdict("untrue") is None


def test_llm_judge_scores_with_a_rule_backend():
    judge = RuleJudgeBackend()
    reward = LLMJudge(judge=judge)
    trajectories = [
        traj(r"\boxed{the Paris}"),
        traj(r"\boxed{Rome}"),
        traj("no box, just Paris?"),
        traj(r"\boxed{Paris"),
    ]
    assert reward.score(trajectories) == [1.0, 0.0, 0.0, 0.0]
    # one batched request, only for boxed answers (MemFactory: 0 without \boxed{}, no judge call)
    assert judge.calls == 1 and len(judge.prompts) == 2
    assert "Gold answer: Paris" in judge.prompts[0] and "Predicted answer: the Paris" in judge.prompts[0]
    assert all(not t.counters for t in trajectories)


def test_llm_judge_auto_mode_judges_unboxed_answers():
    class AutoJudge(LLMJudge):
        extract_mode = "auto"

    judge = RuleJudgeBackend()
    assert AutoJudge(judge=judge).score([traj("So the answer is Paris"), traj("Rome")]) == [1.0, 0.0]
    assert len(judge.prompts) == 2


def test_llm_judge_retries_transient_failures():
    judge = RuleJudgeBackend(fail_first=2)
    assert LLMJudge(judge=judge, retries=2).score([traj(r"\boxed{Paris}")]) == [1.0]
    assert judge.calls == 3


def test_llm_judge_dead_backend_raises():
    judge = RuleJudgeBackend(fail_first=10)
    with pytest.raises(MemFactoryError, match="every attempt"):
        LLMJudge(judge=judge, retries=1).score([traj(r"\boxed{Paris}")])
    with pytest.raises(MemFactoryError, match="needs a judge"):
        LLMJudge()


def test_llm_judge_unparseable_is_counted_not_silent(caplog):
    judge = RuleJudgeBackend(reply="I am not sure.")
    trajectories = [traj(r"\boxed{Paris}"), traj("")]
    with caplog.at_level("WARNING"):
        scores = LLMJudge(judge=judge, retries=1).score(trajectories)
    assert scores == [0.0, 0.0] and not any(math.isnan(s) for s in scores)
    assert trajectories[0].counters == {"judge_failures": 1.0}
    assert trajectories[1].counters == {}  # nothing to judge: no failure
    assert judge.calls == 2
    assert "judge_failures" in caplog.text


def test_llm_judge_with_a_real_random_model_counts_failures(tiny_backend):
    """A random-init transformers model as judge writes gibberish: each unparsed verdict is counted."""
    trajectories = [traj(r"\boxed{Paris}"), traj(r"\boxed{Rome}")]
    scores = LLMJudge(judge=tiny_backend, retries=0, max_new_tokens=4).score(trajectories)
    for s, t in zip(scores, trajectories):
        if "judge_failures" in t.counters:
            assert s == 0.0 and t.counters["judge_failures"] == 1.0
        else:  # the rare parsed verdict must be a real 0/1
            assert s in (0.0, 1.0)
    assert sum(t.counters.get("judge_failures", 0) for t in trajectories) >= 1


# --------------------------------------------------------------------------- training vs evaluation


def test_boxed_cap_scales_with_the_gold():
    from memfactory.envs.answer_metrics import boxed_cap

    assert boxed_cap(["Paris"]) == MAX_BOXED_CHARS  # the floor
    long_gold = "The Royal Society for the Protection of Birds and Wildlife"  # 58 characters
    assert boxed_cap(["x", long_gold]) == 2 * len(long_gold)
    # a gold longer than 40 characters can be matched (a fixed 40-character cap scored it 0)
    assert score("em", "\\boxed{" + long_gold + "}", long_gold) == 1.0
    assert score("format", "\\boxed{" + long_gold + "}", long_gold) == 1.0
    # ... while boxing far more than the gold still cannot win
    assert score("sub_em", "\\boxed{" + long_gold * 3 + "}", long_gold) == 0.0


def test_memagent_metrics_are_registered_and_eval_only():
    from memfactory.config import check_training_rewards

    for name in ("memagent_sub_em", "memagent_em", "memagent_f1", "memagent_string_match_all"):
        assert issubclass(REGISTRY.get("reward", name).target, Reward)
        with pytest.raises(MemFactoryError) as info:
            check_training_rewards({"boxed_em": 1.0, name: 1.0}, "preset 'p'")
        message = str(info.value)
        assert f"rewards.{name}" in message and "boxed_em" in message and "sub_em" in message
    check_training_rewards({"boxed_em": 1.0, "sub_em": 1.0, "em": 1.0, "f1": 0.5, "format": 0.1})


def test_build_env_refuses_an_eval_only_training_reward():
    from memfactory.config import parse_preset
    from memfactory.envs.build import build_env
    from memfactory.errors import ConfigError

    data = {
        "name": "p",
        "agent": "direct",
        "env": {"type": "long_context", "data": "synthetic://docqa?n=4&seed=0"},
        "rewards": {"memagent_sub_em": 1.0},
    }
    from memfactory.config import Preset

    # Preset validation (presets validate, the UI, train) and build_env (a Preset built in code) both refuse it.
    for refuse in (lambda: parse_preset(data), lambda: build_env(Preset.model_validate(data))):
        with pytest.raises(ConfigError) as info:
            refuse()
        assert info.value.problems[0][0] == "rewards.memagent_sub_em"
        assert "cannot be a training reward" in info.value.problems[0][1]
        assert "boxed_em" in info.value.problems[0][1]
    data["rewards"] = {"boxed_em": 1.0}
    env = build_env(parse_preset(data))
    trajectories = [traj(r"\boxed{" + s.answers[0] + "}", s.answers) for s in env.samples("train")]
    env.score(trajectories)
    assert [t.rewards for t in trajectories] == [{"boxed_em": 1.0}] * len(trajectories)


def test_train_cli_refuses_an_eval_only_reward_before_loading_a_model(tmp_path, capsys):
    from memfactory.cli import main
    from memfactory.paths import presets_dir

    code = main(
        [
            "train",
            str(presets_dir() / "tiny_test.yaml"),
            "--set",
            "rewards={memagent_sub_em: 1.0}",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "rewards.memagent_sub_em" in err and "cannot be a training reward" in err and "boxed_em" in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder or model
