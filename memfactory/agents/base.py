"""The Agent layer: a workflow that composes modules and runs samples to trajectories.

``run(..., train=True)`` must record every trainable model call with its exact sampled token ids
and log-probs (a backend whose ``exposes_tokens`` is True); ``train=False`` works on any backend.
Each sample is run ``group_size`` times; ``Trajectory.group`` is the index of its sample in the
batch, which is what GRPO normalises over.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel

from memfactory.backends.base import Backend
from memfactory.types import Sample, SamplingParams, Trajectory


class Agent(ABC):
    def __init__(self, modules: dict[str, Any], options: BaseModel):
        self.modules = modules
        self.options = options

    @abstractmethod
    def run(
        self,
        samples: list[Sample],
        backend: Backend,
        *,
        params: SamplingParams,
        group_size: int = 1,
        train: bool = False,
    ) -> list[Trajectory]:
        """Trajectories ordered sample by sample, ``group_size`` consecutive ones per sample."""
