"""What a schema-valid preset must also satisfy: registry names and their options, and fields
that each pass their own bounds but together would train nothing or set something with no effect.

Every check returns ``(field path, message)`` pairs, reported together in one ``ConfigError`` by
:func:`memfactory.config.load.parse_preset`; each message names the fields involved and the fix.
The cross-field checks are TRL's ``GRPOConfig.__post_init__`` idea (which refuses
``num_generations < 2``) applied to this trainer's recipe.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from memfactory.config.schema import Preset, TrainerConfig
from memfactory.errors import ConfigError
from memfactory.registry import REGISTRY, UnknownNameError, unknown_name_message

Problems = list[tuple[str, str]]

# --------------------------------------------------------------------------- schema and registry


def pydantic_problems(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            hint = _closest_key(error, item)
            if hint:
                message += f"; did you mean {hint!r}?"
        problems.append((path, message))
    return problems


def _closest_key(error: ValidationError, item: dict[str, Any]) -> str | None:
    """For an unknown key, the closest field name of the model it sits in."""
    model = _model_at(Preset, [p for p in item["loc"][:-1]]) if error.title == "Preset" else None
    if model is None:
        return None
    close = difflib.get_close_matches(str(item["loc"][-1]), list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _model_at(model: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _option_problems(entry: Any, options: Any, where: str) -> list[tuple[str, str]]:
    """A component's options checked against the schema its registry entry declared."""
    try:
        entry.config.model_validate(options)
    except ValidationError as exc:
        problems = []
        for path, message in pydantic_problems(exc, where):
            if message == "unknown key":
                key = path.rsplit(".", 1)[-1]
                close = difflib.get_close_matches(key, list(entry.config.model_fields), n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean {close[0]!r}?"
            problems.append((path, message))
        return problems
    return []


def raw_component_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Component options checked on the raw dict, for presets whose overall shape is already wrong.

    So one validation reports every problem at once instead of the shape errors first and the
    option errors only after those are fixed.
    """
    parts: list[tuple[str, Any, Any, str]] = []  # (kind, registry name, options, path prefix)
    modules = data.get("modules")
    for slot, spec in (modules.items() if isinstance(modules, dict) else []):
        if isinstance(spec, dict):
            parts.append(("module", spec.get("type"), {k: v for k, v in spec.items() if k != "type"}, f"modules.{slot}"))
    env = data.get("env")
    if isinstance(env, dict):
        parts.append(("env", env.get("type"), {k: v for k, v in env.items() if k != "type"}, "env"))
    parts.append(("agent", data.get("agent"), data.get("agent_options") or {}, "agent_options"))
    for key in ("model", "judge"):
        model = data.get(key)
        if isinstance(model, dict):
            parts.append(("backend", model.get("backend", "hf"), model.get("options") or {}, f"{key}.options"))
    problems: list[tuple[str, str]] = []
    for kind, name, options, where in parts:
        if isinstance(name, str) and name in REGISTRY.names(kind):
            problems.extend(_option_problems(REGISTRY.get(kind, name), options, where))
    return problems


def registry_problems(preset: Preset) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def check(kind: str, name: str, where: str) -> Any:
        names = REGISTRY.names(kind)
        if name not in names:
            problems.append((where, unknown_name_message(kind, name, names)))
            return None
        return REGISTRY.get(kind, name)

    def check_options(entry: Any, options: dict[str, Any], where: str) -> None:
        problems.extend(_option_problems(entry, options, where))

    agent = check("agent", preset.agent, "agent")
    if agent is not None:
        check_options(agent, preset.agent_options, "agent_options")
        slots: dict[str, list[str]] = agent.meta.get("slots", {})
        for slot in slots:
            if slot not in preset.modules:
                problems.append((f"modules.{slot}", f"agent {preset.agent!r} needs a module in slot {slot!r}"))
        for slot in preset.modules:
            if slots and slot not in slots:
                problems.append((f"modules.{slot}", f"agent {preset.agent!r} has no slot {slot!r}; slots: {', '.join(slots)}"))
    for slot, spec in preset.modules.items():
        entry = check("module", spec.type, f"modules.{slot}.type")
        if entry is not None:
            check_options(entry, spec.options, f"modules.{slot}")
            allowed = (agent.meta.get("slots", {}) if agent else {}).get(slot)
            if allowed and spec.type not in allowed:
                problems.append((f"modules.{slot}.type", f"slot {slot!r} takes {', '.join(allowed)}, not {spec.type!r}"))
    env = check("env", preset.env.type, "env.type")
    if env is not None:
        check_options(env, preset.env.options, "env")
    backend = check("backend", preset.model.backend, "model.backend")
    if backend is not None:
        check_options(backend, preset.model.options, "model.options")
    rollout = preset.trainer.rollout
    if rollout.engine == "vllm":
        check_options(REGISTRY.get("backend", "vllm"), rollout.options, "trainer.rollout.options")
    elif rollout.options:
        problems.append(("trainer.rollout.options", f"engine {rollout.engine!r} takes no options (only vllm does)"))
    for reward in preset.rewards:
        check("reward", reward, f"rewards.{reward}")
    problems.extend(eval_only_problems(preset.rewards))
    if "llm_judge" in preset.rewards and preset.judge is None:
        problems.append(("judge", "the llm_judge reward needs a judge model: judge: {backend: openai, base_url: ..., path: ...}"))
    if preset.judge is not None:
        judge = check("backend", preset.judge.backend, "judge.backend")
        if judge is not None:
            check_options(judge, preset.judge.options, "judge.options")
    return problems


# --------------------------------------------------------------------------- evaluation-only rewards


def eval_only_problems(rewards: Mapping[str, Any]) -> Problems:
    """``(rewards.<name>, why)`` for each evaluation-only metric named as a training reward: a reward
    class says it is one with a class attribute ``eval_only`` holding why and what to train with."""
    problems = []
    for name in rewards:
        try:
            target = REGISTRY.get("reward", name).target
        except UnknownNameError:
            continue  # unknown names are reported by the registry checks / build_rewards
        why = getattr(target, "eval_only", None)
        if why:
            problems.append((f"rewards.{name}", f"{name!r} cannot be a training reward: {why}"))
    return problems


def check_training_rewards(rewards: Mapping[str, Any], source: str = "<preset>") -> None:
    """Refuse evaluation-only metrics under a preset's ``rewards:`` (ConfigError naming ``rewards.<name>``)."""
    problems = eval_only_problems(rewards)
    if problems:
        raise ConfigError(source, problems)


# --------------------------------------------------------------------------- fields that must agree


def trainer_problems(t: TrainerConfig) -> Problems:
    """Combinations inside ``trainer`` that train nothing, or set a field that then does nothing.

    Settings that hold their default are never refused (a saved preset writes every field), only
    one that was changed to no effect."""
    problems: Problems = []
    if t.group_size < 2:
        problems.append(("trainer.group_size", (
            f"is {t.group_size}, but GRPO needs at least 2 rollouts per prompt: a group of one has no mean "
            "to compare with, every advantage is 0 and the run trains on nothing; set trainer.group_size "
            "to 2 or more (8 is usual)")))
    elif t.temperature == 0:
        problems.append(("trainer.temperature", (
            f"is 0 (greedy) with trainer.group_size {t.group_size}: the rollouts of a group are all the same "
            "answer, every group has equal rewards and is skipped, and the run trains on nothing; set "
            "trainer.temperature above 0 (0.7 to 1.0 is usual)")))
    if t.epsilon_high is not None and t.epsilon_high < t.epsilon:
        problems.append(("trainer.epsilon_high", (
            f"({t.epsilon_high}) is below trainer.epsilon ({t.epsilon}): the upper clip range would be "
            "tighter than the lower one, the opposite of DAPO's clip-higher; set epsilon_high to at least "
            "epsilon, or leave it out to use epsilon")))
    if t.warmup_steps > t.steps:
        problems.append(("trainer.warmup_steps", (
            f"({t.warmup_steps}) is more than trainer.steps ({t.steps}): the learning rate would never reach "
            "trainer.lr; set warmup_steps to at most steps (a tenth of them is usual), or raise steps")))
    if t.beta == 0:
        if t.kl_clamp is not None:
            problems.append(("trainer.kl_clamp", (
                "is set but trainer.beta is 0, so there is no KL term to clamp; set trainer.beta above 0 "
                "(MemAgent: 0.001) or remove kl_clamp")))
        if not t.kl_bias_correction:
            problems.append(("trainer.kl_bias_correction", (
                "is false but trainer.beta is 0, so there is no KL term to correct; set trainer.beta above 0 "
                "(MemAgent: 0.001) or remove kl_bias_correction")))
    rollout = t.rollout
    if rollout.engine == "policy":
        if rollout.sync_every != 1:
            problems.append(("trainer.rollout.sync_every", (
                f"is {rollout.sync_every} but trainer.rollout.engine is policy: the training model generates "
                "its own rollouts, so there are no weights to push; remove sync_every, or pick engine hf or vllm")))
        if rollout.dtype is not None:
            problems.append(("trainer.rollout.dtype", (
                f"is {rollout.dtype} but trainer.rollout.engine is policy: the training model generates in its "
                "own dtype (model.dtype); remove rollout.dtype, or pick engine hf or vllm")))
        if rollout.importance_sampling:
            problems.append(("trainer.rollout.importance_sampling", (
                "is true but trainer.rollout.engine is policy: the policy samples its own rollouts, so there is "
                "no engine mismatch to correct; leave it unset, or pick engine hf or vllm")))
    return problems


def batch_problems(preset: Preset) -> Problems:
    """``trainer.batch_size`` against the environment's ``train_size`` (when it has one).

    A step's rollout batch takes ``batch_size`` prompts in a seeded order and an epoch drops its
    last partial batch (TRL's sampler does the same), so a larger batch silently shrinks to the
    training set and a ``train_size`` that is not a multiple leaves prompts unseen every epoch."""
    try:
        options = preset.component_options(preset.env, "env")
    except (UnknownNameError, ValidationError):
        return []  # reported by the registry checks
    train_size = getattr(options, "train_size", None)
    batch = preset.trainer.batch_size
    if train_size is None:
        return []
    if batch > train_size:
        return [("trainer.batch_size", (
            f"({batch}) is more than env.train_size ({train_size}): a step can take only {train_size} prompts; "
            f"lower trainer.batch_size to at most {train_size}, or raise env.train_size"))]
    if train_size % batch:
        return [("env.train_size", (
            f"({train_size}) is not a multiple of trainer.batch_size ({batch}): each epoch drops its last "
            f"{train_size % batch} prompts unseen; make env.train_size a multiple of the batch size "
            f"(e.g. {train_size - train_size % batch} or {train_size - train_size % batch + batch})"))]
    return []


def cross_field_problems(preset: Preset) -> Problems:
    """Every cross-field problem of a schema-valid preset."""
    return trainer_problems(preset.trainer) + batch_problems(preset)
