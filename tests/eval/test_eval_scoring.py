"""Scoring: each sample with its set's metric, renamed through a protocol; an unknown metric is a user error."""

from __future__ import annotations

import pytest

from memfactory.errors import MemFactoryError
from memfactory.eval.protocols import MEMAGENT
from memfactory.eval.scoring import metric_for, score_trajectories
from memfactory.types import Sample, Trajectory


def test_each_sample_is_scored_with_its_sets_metric():
    hotpot = Sample(id="h", question="q", answers=["apple", "pear", "fig"])
    ruler = Sample(id="r", question="q", answers=["apple", "pear", "fig"], meta={"metric": "string_match_all"})
    assert metric_for(hotpot) == "sub_em" and metric_for(ruler) == "string_match_all"
    assert metric_for(hotpot, default="f1") == "f1"
    answers = ["\\boxed{apple pear}", "nothing here"]
    trajectories = [Trajectory(sample=s, answer=a) for s in (hotpot, ruler) for a in answers]
    results = score_trajectories([hotpot, ruler], trajectories, k=2, latency_s=2.0)
    assert [r.metric for r in results] == ["sub_em", "string_match_all"]
    # sub_em: "apple" is inside "apple pear" -> 1; RULER: 2 of 3 gold words present
    assert results[0].scores == [1.0, 0.0]
    assert results[1].scores == pytest.approx([2 / 3, 0.0])
    assert results[1].score == pytest.approx(1 / 3)
    assert results[0].predictions == ["apple pear", "nothing here"]
    assert results[0].latency_s == pytest.approx(1.0)


def test_unknown_metric_is_a_user_error():
    sample = Sample(id="x", question="q", answers=["a"])
    with pytest.raises(MemFactoryError, match="sub_emm"):
        score_trajectories([sample], [Trajectory(sample=sample, answer="a")], k=1, default_metric="sub_emm")


def test_metric_for_renames_through_the_protocol():
    hotpot = Sample(id="h", question="q", answers=["Paris"])
    qa = Sample(id="q", question="q", answers=["a"], meta={"ruler_task": "qa_1"})
    ruler = Sample(id="r", question="q", answers=["a"], meta={"metric": "string_match_all"})
    locomo = Sample(id="l", question="q", answers=["a"], meta={"metric": "f1"})
    names = [metric_for(s, "sub_em", MEMAGENT.metric_map) for s in (hotpot, qa, ruler, locomo)]
    assert names == ["memagent_sub_em", "memagent_sub_em", "memagent_string_match_all", "memagent_f1"]
    # scored the MemAgent way: against answers[0], no raw-text fallback
    samples = [Sample(id="x", question="q", answers=["New York City", "NYC"]), hotpot]
    trajectories = [
        Trajectory(sample=samples[0], answer="Therefore, the answer is NYC."),
        Trajectory(sample=samples[1], answer="Paris"),
    ]
    results = score_trajectories(samples, trajectories, 1, default_metric="sub_em", metric_map=MEMAGENT.metric_map)
    assert [r.scores for r in results] == [[0.0], [0.0]]
    assert [r.predictions for r in results] == [["NYC"], [None]]
