"""Checks every batch agent's ``run`` starts with, kept in one place so the agents agree."""

from __future__ import annotations

from typing import Any

from memfactory.calls import require_token_backend
from memfactory.types import Sample, Trajectory


def check_run(samples: list[Sample], backend: Any, group_size: int, train: bool) -> bool:
    """Raise on a bad group size or (training) a backend without token ids; False when there is nothing to run."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not samples:
        return False
    if train:
        require_token_backend(backend)
    return True


def group_trajectories(samples: list[Sample], group_size: int) -> list[Trajectory]:
    """``group_size`` consecutive fresh trajectories per sample, ``group`` = the sample's index."""
    return [Trajectory(sample=s, group=i) for i, s in enumerate(samples) for _ in range(group_size)]
