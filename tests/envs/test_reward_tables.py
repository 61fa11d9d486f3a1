"""Table-driven scoring tests: every row of tests/envs/rewards_cases.yaml, worked out by hand from
MemAgent's published scoring definitions (and, for ``sub_em``, MemFactory's whole-token rule), is
scored by the registered rewards and compared with its expected value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from memfactory.envs.answer_metrics import boxed_em, memagent_extract
from memfactory.registry import REGISTRY
from memfactory.types import Sample, Trajectory

CASES = yaml.safe_load((Path(__file__).parent / "rewards_cases.yaml").read_text(encoding="utf-8"))
MIN_ROWS = 40  # the issue asks for at least 40 hand-derived cases per metric


def text(value: Any) -> str:
    """A table text: a string, or parts joined where ``[s, n]`` stands for ``s * n``."""
    if isinstance(value, str):
        return value
    return "".join(part if isinstance(part, str) else part[0] * part[1] for part in value)


def score(name: str, answer: str, golds: list[str]) -> float:
    reward = REGISTRY.get("reward", name).target()
    trajectory = Trajectory(sample=Sample(id="s", question="q?", answers=golds), answer=answer)
    return reward.score([trajectory])[0]


def ids(rows: list[list[Any]]) -> list[str]:
    return [f"{i}:{text(row[0])[:40]}" for i, row in enumerate(rows)]


@pytest.mark.parametrize("table", ["memagent_eval", "memagent_string_match_all", "boxed_em", "sub_em"])
def test_each_table_has_at_least_40_rows(table):
    assert len(CASES[table]) >= MIN_ROWS


@pytest.mark.parametrize("row", CASES["memagent_eval"], ids=ids(CASES["memagent_eval"]))
def test_memagent_eval_extraction_and_metrics(row):
    response, golds, extracted, sub, exact, token_f1 = row
    response = text(response)
    assert memagent_extract(response) == extracted
    assert score("memagent_sub_em", response, golds) == sub
    assert score("memagent_em", response, golds) == exact
    assert score("memagent_f1", response, golds) == pytest.approx(token_f1, abs=1e-12)


@pytest.mark.parametrize("row", CASES["memagent_string_match_all"], ids=ids(CASES["memagent_string_match_all"]))
def test_memagent_ruler_string_match_all(row):
    response, golds, expected = row
    assert score("memagent_string_match_all", text(response), golds) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("row", CASES["boxed_em"], ids=ids(CASES["boxed_em"]))
def test_boxed_em_is_memagents_training_reward(row):
    answer, golds, expected = row
    assert boxed_em(text(answer), golds) == expected
    assert score("boxed_em", text(answer), golds) == expected


@pytest.mark.parametrize("row", CASES["sub_em"], ids=ids(CASES["sub_em"]))
def test_training_sub_em_pays_whole_tokens_only(row):
    answer, golds, expected = row
    assert score("sub_em", text(answer), golds) == expected


@pytest.mark.parametrize("answer", [r"\boxed{e}", r"\boxed{}", r"\boxed{the}", r"\boxed{ }", r"\boxed{a}"])
def test_gaming_answers_score_zero_under_every_training_reward(answer):
    for name in ("boxed_em", "sub_em", "em", "f1"):
        assert score(name, answer, ["Paris, France"]) == 0.0, name
        assert score(name, answer, ["Paris"]) == 0.0, name
