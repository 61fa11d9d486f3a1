"""Build the environment a preset names, with its weighted rewards, from the registry."""

from __future__ import annotations

import inspect
from typing import Any

from memfactory.config import Preset, check_training_rewards
from memfactory.envs.base import Environment, Reward
from memfactory.registry import REGISTRY


def build_rewards(weights: dict[str, float], **context: Any) -> dict[str, Reward]:
    """Instantiate each named reward; a reward that takes e.g. ``judge=`` gets it from ``context``."""
    rewards: dict[str, Reward] = {}
    for name in weights:
        cls = REGISTRY.get("reward", name, where=f"rewards.{name}").target
        accepted = inspect.signature(cls).parameters
        kwargs = {key: value for key, value in context.items() if key in accepted}
        rewards[name] = cls(**kwargs)
    return rewards


def build_env(preset: Preset, **reward_context: Any) -> Environment:
    """The preset's environment with its training rewards (evaluation-only metrics are refused)."""
    check_training_rewards(preset.rewards, f"preset {preset.name!r}")
    entry = REGISTRY.get("env", preset.env.type, where="env.type")
    options = entry.config.model_validate(preset.env.options)
    rewards = build_rewards(preset.rewards, **reward_context)
    return entry.target(options, rewards, dict(preset.rewards))
