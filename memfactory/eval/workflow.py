"""One preset over a list of samples, k paths each, no training: the Playground's and the CLI's unit."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from memfactory.agents.build import build_agent
from memfactory.backends.build import build_backend
from memfactory.config import Preset
from memfactory.errors import MemFactoryError
from memfactory.eval.scoring import DEFAULT_METRIC, SampleResult, metric_for, score_trajectories
from memfactory.types import Sample, SamplingParams

ProgressFn = Callable[[int, int, "list[SampleResult]"], None]


def evaluate_workflow(
    preset: Preset,
    samples: Sequence[Sample],
    *,
    k: int = 1,
    params: SamplingParams | None = None,
    on_progress: ProgressFn | None = None,
    backend: Any = None,
    agent: Any = None,
    batch_size: int = 4,
    default_metric: str = DEFAULT_METRIC,
    judge: Any = None,
    metric_map: Mapping[str, str] | None = None,
) -> list[SampleResult]:
    """Run ``preset``'s agent over ``samples`` k times each (no training), score every path.

    ``backend`` / ``agent`` / ``judge`` are built from the preset when not given (pass a loaded
    backend to avoid reloading the model between calls). ``params`` defaults to the preset's
    rollout settings. Samples go ``batch_size`` at a time (x k paths in one batched run);
    ``on_progress(done, total, finished)`` is called after each batch with that batch's results.
    """
    if k < 1:
        raise MemFactoryError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise MemFactoryError(f"batch_size must be >= 1, got {batch_size}")
    if params is None:
        t = preset.trainer
        params = SamplingParams(
            max_new_tokens=t.max_new_tokens, temperature=t.temperature, top_p=t.top_p, stop=list(t.stop)
        )
    backend = backend if backend is not None else build_backend(preset.model)
    agent = agent if agent is not None else build_agent(preset)
    if judge is None and preset.judge is not None and _needs_judge(samples, default_metric, metric_map):
        judge = build_backend(preset.judge, where="judge.backend")
    samples = list(samples)
    results: list[SampleResult] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        began = time.perf_counter()
        trajectories = agent.run(batch, backend, params=params, group_size=k, train=False)
        elapsed = time.perf_counter() - began
        finished = score_trajectories(
            batch,
            trajectories,
            k,
            default_metric=default_metric,
            judge=judge,
            latency_s=elapsed,
            metric_map=metric_map,
        )
        results.extend(finished)
        if on_progress is not None:
            on_progress(len(results), len(samples), finished)
    return results


def _needs_judge(samples: Sequence[Sample], default_metric: str, metric_map: Mapping[str, str] | None = None) -> bool:
    return any(metric_for(s, default_metric, metric_map) == "llm_judge" for s in samples)
