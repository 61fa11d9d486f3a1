"""A step's metrics from its trajectories and its update, under the names of :mod:`~memfactory.tracking.metric_keys`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from memfactory.tracking import metric_keys as keys
from memfactory.types import Trajectory


@dataclass
class TrajectoryStats:
    """What the step metrics need of one trajectory: small enough to gather from every rank."""

    reward: float
    rewards: dict[str, float]
    counters: dict[str, float]
    group: Any
    response_lengths: list[int]
    prompt_tokens: int

    @classmethod
    def of(cls, t: Trajectory, group: Any = None) -> TrajectoryStats:
        return cls(
            reward=t.reward,
            rewards=dict(t.rewards),
            counters=dict(t.counters),
            group=t.group if group is None else group,
            response_lengths=[c.num_response_tokens for c in t.calls],
            prompt_tokens=sum(len(c.prompt_ids) for c in t.calls),
        )


def step_metrics(
    trajectories: list[TrajectoryStats] | list[Trajectory], update: dict[str, float]
) -> dict[str, float]:
    """Reward, length, token and update metrics of one step, every reward part and every counter."""
    trajectories = [t if isinstance(t, TrajectoryStats) else TrajectoryStats.of(t) for t in trajectories]
    rewards = np.array([t.reward for t in trajectories], dtype=np.float64)
    lengths = [n for t in trajectories for n in t.response_lengths]
    metrics: dict[str, float] = {
        keys.REWARD_MEAN: float(rewards.mean()) if len(rewards) else 0.0,
        keys.REWARD_STD: float(rewards.std()) if len(rewards) else 0.0,
        keys.REWARD_MAX: float(rewards.max()) if len(rewards) else 0.0,
        keys.REWARD_MIN: float(rewards.min()) if len(rewards) else 0.0,
        keys.RESPONSE_LENGTH_MEAN: float(np.mean(lengths)) if lengths else 0.0,
        keys.RESPONSE_LENGTH_MAX: float(np.max(lengths)) if lengths else 0.0,
        keys.CALLS_PER_TRAJECTORY: len(lengths) / max(len(trajectories), 1),
        keys.TOKENS_TOTAL: float(sum(lengths) + sum(t.prompt_tokens for t in trajectories)),
        keys.LOSS: update.get("loss", 0.0),
        keys.KL: update.get("kl", 0.0),
        keys.CLIP_RATIO: update.get("clip_ratio/region_mean", update.get("clip_ratio", 0.0)),
        keys.GRAD_NORM: update.get("grad_norm", 0.0),
    }
    for key, value in update.items():
        metrics.setdefault(f"{keys.UPDATE_PREFIX}{key}", value)
    parts = sorted({name for t in trajectories for name in t.rewards})
    for name in parts:
        metrics[keys.reward_part(name)] = float(np.mean([t.rewards.get(name, 0.0) for t in trajectories]))
    counters = sorted({name for t in trajectories for name in t.counters})
    for name in counters:
        total = float(np.sum([t.counters.get(name, 0.0) for t in trajectories]))
        if name == "skipped_group":
            metrics[keys.SKIPPED_GROUP_FRACTION] = total / max(len(trajectories), 1)
        else:
            metrics[f"{keys.COUNT_PREFIX}{name}"] = total
    return metrics

