"""A preset: the whole description of an agent, its model, data, rewards and training recipe.

* :mod:`.schema`: the pydantic models and per-field bounds.
* :mod:`.checks`: registry names and their options, and the cross-field checks (fields that each
  pass their bounds but together train nothing or have no effect; evaluation-only rewards).
* :mod:`.load`: YAML read / guard / parse / override / save; :func:`parse_preset` runs all of it.

Everything public is re-exported here: ``from memfactory.config import load_preset, Preset``.
"""

from memfactory.config.checks import (
    check_training_rewards,
    cross_field_problems,
    eval_only_problems,
)
from memfactory.config.load import (
    MAX_PRESET_BYTES,
    MAX_PRESET_DEPTH,
    MAX_PRESET_VALUES,
    apply_override,
    load_preset,
    parse_preset,
    save_preset,
)
from memfactory.config.schema import (
    INT64_MAX,
    INT64_MIN,
    MAX_GROUP_SIZE,
    MAX_LR,
    MAX_SIZE,
    MAX_STEPS,
    MAX_TOKENS,
    ComponentSpec,
    EnvConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    Preset,
    RolloutConfig,
    Strict,
    TrainerConfig,
)

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_GROUP_SIZE",
    "MAX_LR",
    "MAX_PRESET_BYTES",
    "MAX_PRESET_DEPTH",
    "MAX_PRESET_VALUES",
    "MAX_SIZE",
    "MAX_STEPS",
    "MAX_TOKENS",
    "ComponentSpec",
    "EnvConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "Preset",
    "RolloutConfig",
    "Strict",
    "TrainerConfig",
    "apply_override",
    "check_training_rewards",
    "cross_field_problems",
    "eval_only_problems",
    "load_preset",
    "parse_preset",
    "save_preset",
]
