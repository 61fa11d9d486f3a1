"""The Environment layer: where samples come from and how a finished trajectory is scored.

Rewards are registry entries (kind ``reward``): a class with ``score(trajectories) -> list[float]``.
An environment combines the preset's ``rewards: {name: weight}`` into ``Trajectory.rewards``
(each named part) and ``Trajectory.reward`` (the weighted sum).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pydantic import BaseModel

from memfactory.types import Sample, Trajectory


class Reward(ABC):
    """A named reward part. Batched so that an LLM judge can send one request batch."""

    name: str = "reward"

    @abstractmethod
    def score(self, trajectories: list[Trajectory]) -> list[float]: ...


class Environment(ABC):
    def __init__(self, options: BaseModel, rewards: dict[str, Reward], weights: dict[str, float]):
        self.options = options
        self.rewards = rewards
        self.weights = weights

    @abstractmethod
    def samples(self, split: str = "train") -> list[Sample]:
        """``train`` or an eval-set name (e.g. ``eval_50``)."""

    def score(self, trajectories: list[Trajectory]) -> None:
        """Fill each trajectory's named reward parts and weighted total."""
        parts = {name: reward.score(trajectories) for name, reward in self.rewards.items()}
        for i, trajectory in enumerate(trajectories):
            trajectory.rewards = {name: float(values[i]) for name, values in parts.items()}
            trajectory.reward = sum(self.weights[name] * trajectory.rewards[name] for name in parts)
