"""Preset -> ready Agent: each module slot's class with its parsed options, then the agent."""

from __future__ import annotations

from pydantic import ValidationError

from memfactory.agents.base import Agent
from memfactory.config import Preset
from memfactory.errors import ConfigError
from memfactory.registry import REGISTRY, UnknownNameError


def _problems(error: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return [(".".join([prefix, *map(str, item["loc"])]), item["msg"]) for item in error.errors()]


def build_agent(preset: Preset) -> Agent:
    """Instantiate ``preset.agent`` with its modules; problems raise ConfigError with field paths.

    An agent with a ``credit`` option takes ``trainer.credit`` unless ``agent_options`` sets it.
    """
    source = f"preset {preset.name!r}"
    try:
        entry = REGISTRY.get("agent", preset.agent, where="agent")
    except UnknownNameError as exc:
        raise ConfigError(source, [("agent", str(exc))]) from None
    slots: dict[str, list[str]] = entry.meta.get("slots", {})
    missing = [slot for slot in slots if slot not in preset.modules]
    if missing:
        raise ConfigError(
            source, [(f"modules.{s}", f"agent {preset.agent!r} needs a module in slot {s!r}") for s in missing]
        )

    modules = {}
    for slot, spec in preset.modules.items():
        where = f"modules.{slot}"
        try:
            module_entry = REGISTRY.get("module", spec.type, where=f"{where}.type")
        except UnknownNameError as exc:
            raise ConfigError(source, [(f"{where}.type", str(exc))]) from None
        allowed = slots.get(slot)
        if allowed and spec.type not in allowed:
            raise ConfigError(
                source, [(f"{where}.type", f"slot {slot!r} takes {', '.join(allowed)}, not {spec.type!r}")]
            )
        try:
            options = module_entry.config.model_validate(spec.options)
        except ValidationError as exc:
            raise ConfigError(source, _problems(exc, where)) from None
        modules[slot] = module_entry.target(options)

    options = dict(preset.agent_options)
    if "credit" in entry.config.model_fields and "credit" not in options:
        options["credit"] = preset.trainer.credit  # one place to say it: trainer.credit, unless the agent overrides
    try:
        agent_options = entry.config.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, "agent_options")) from None
    return entry.target(modules, agent_options)
