"""Scoring: each path's answer against the gold with its set's metric, grouped k paths per question."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from memfactory.envs.answer_metrics import extract_prediction
from memfactory.envs.build import build_rewards
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY, UnknownNameError
from memfactory.types import Sample, Trajectory

DEFAULT_METRIC = "sub_em"


@dataclass
class SampleResult:
    """One question answered ``k`` times: every path's answer, score, tokens and memory trace."""

    sample_id: str
    question: str
    gold: list[str]
    metric: str
    answers: list[str]  # the raw final answer of each path
    predictions: list[str | None]  # what the metric compared (boxed / "the answer is" / raw), None = unscorable
    scores: list[float]  # one per path
    latency_s: float  # this sample's share of its batch's wall time
    tokens: list[int]  # generated tokens of each path, all calls together
    prompt_tokens: list[int]  # prompt tokens of each path, all calls together
    calls: list[int]  # model calls of each path
    traces: list[list[dict[str, Any]]]  # each path's memory evolution
    counters: dict[str, float] = field(default_factory=dict)  # summed over the paths
    category: int | str | None = None  # sample.meta["category"] (LoCoMo-shaped sets), else None
    category_name: str | None = None  # sample.meta["category_name"], else None

    @property
    def k(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        """Mean over the paths (this sample's contribution to avg@k)."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score
        data["k"] = self.k
        return data


def metric_for(sample: Sample, default: str = DEFAULT_METRIC, metric_map: Mapping[str, str] | None = None) -> str:
    """The set's own metric (RULER loaders put ``string_match_all`` in meta), else ``default``;
    then renamed through a protocol's ``metric_map`` (e.g. ``sub_em`` -> ``memagent_sub_em``)."""
    metric = sample.meta.get("metric") if isinstance(sample.meta, dict) else None
    name = str(metric) if metric else default
    return (metric_map or {}).get(name, name)


def category_of(sample: Sample) -> tuple[int | str | None, str | None]:
    """``(category, category_name)`` from the sample's meta; ``(None, None)`` for sets without."""
    meta = sample.meta if isinstance(sample.meta, dict) else {}
    category, name = meta.get("category"), meta.get("category_name")
    return category, (str(name) if name is not None else None)


def _scorers(names: set[str], judge: Any = None) -> dict[str, Any]:
    for name in names:
        try:
            REGISTRY.get("reward", name, where="metric")
        except UnknownNameError as exc:
            raise MemFactoryError(str(exc)) from None
    return build_rewards({name: 1.0 for name in names}, judge=judge)


def _path_tokens(trajectory: Trajectory) -> tuple[int, int]:
    generated = sum(len(c.response_ids) or math.ceil(len(c.text) / 4) for c in trajectory.calls)
    prompt = sum(len(c.prompt_ids) for c in trajectory.calls)
    return generated, prompt


def _prediction(scorer: Any, trajectory: Trajectory) -> str | None:
    getter = getattr(scorer, "prediction", None)
    if getter is not None:
        return getter(trajectory)
    return extract_prediction(trajectory.answer)


def score_trajectories(
    samples: Sequence[Sample],
    trajectories: Sequence[Trajectory],
    k: int,
    *,
    default_metric: str = DEFAULT_METRIC,
    judge: Any = None,
    latency_s: float = 0.0,
    metric_map: Mapping[str, str] | None = None,
) -> list[SampleResult]:
    """Group ``k`` consecutive trajectories per sample and score each with its sample's metric."""
    if len(trajectories) != len(samples) * k:
        raise RuntimeError(f"agent returned {len(trajectories)} trajectories for {len(samples)} samples x k={k}")
    metrics = [metric_for(s, default_metric, metric_map) for s in samples]
    scorers = _scorers(set(metrics), judge)
    scores: list[float] = [0.0] * len(trajectories)
    for name, scorer in scorers.items():
        idx = [i for i in range(len(trajectories)) if metrics[i // k] == name]
        if idx:
            for i, value in zip(idx, scorer.score([trajectories[i] for i in idx])):
                scores[i] = float(value)
    share = latency_s / max(len(samples), 1)
    results = []
    for j, sample in enumerate(samples):
        paths = list(trajectories[j * k : (j + 1) * k])
        scorer = scorers[metrics[j]]
        counters: dict[str, float] = {}
        for t in paths:
            for key, value in t.counters.items():
                counters[key] = counters.get(key, 0.0) + value
        tokens = [_path_tokens(t) for t in paths]
        category, category_name = category_of(sample)
        results.append(
            SampleResult(
                sample_id=sample.id,
                question=sample.question,
                gold=list(sample.answers),
                metric=metrics[j],
                answers=[t.answer for t in paths],
                predictions=[_prediction(scorer, t) for t in paths],
                scores=scores[j * k : (j + 1) * k],
                latency_s=share,
                tokens=[g for g, _ in tokens],
                prompt_tokens=[p for _, p in tokens],
                calls=[len(t.calls) for t in paths],
                traces=[list(t.trace) for t in paths],
                counters=counters,
                category=category,
                category_name=category_name,
            )
        )
    return results
