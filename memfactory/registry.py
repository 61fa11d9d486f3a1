"""One registry of everything a preset can name.

Modules, agents, environments, rewards and backends register themselves with a decorator.
The YAML presets, the CLI (`memfactory list`) and the web UI's dropdowns all read from here,
so there is never a second list to keep in sync.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from memfactory.errors import MemFactoryError

KINDS = ("module", "agent", "env", "reward", "backend")


class NoConfig(BaseModel):
    """Schema for entries that take no options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry:
    """A registered component: what it is called, what it does and which options it takes."""

    kind: str
    name: str
    target: Any
    description: str
    config: type[BaseModel] = NoConfig
    # Extra facts the UI uses, e.g. the module slots an agent needs: {"memory": ["recurrent"]}.
    meta: dict[str, Any] = field(default_factory=dict)


class UnknownNameError(MemFactoryError):
    """A preset or command named something the registry does not hold."""


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def register(
        self,
        kind: str,
        name: str,
        *,
        description: str,
        config: type[BaseModel] | None = None,
        **meta: Any,
    ) -> Callable[[Any], Any]:
        """Decorator: ``@register("module", "recurrent", description=..., config=RecurrentConfig)``."""
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")

        def decorate(target: Any) -> Any:
            existing = self._entries[kind].get(name)
            if existing is not None and existing.target is not target:
                raise ValueError(f"{kind} {name!r} is registered twice ({existing.target} and {target})")
            self._entries[kind][name] = Entry(kind, name, target, description, config or NoConfig, dict(meta))
            return target

        return decorate

    def get(self, kind: str, name: str, *, where: str = "") -> Entry:
        """Look a name up; a miss names the closest valid spelling."""
        load_builtins()
        entries = self._entries[kind]
        if name in entries:
            return entries[name]
        raise UnknownNameError(unknown_name_message(kind, name, list(entries), where=where))

    def names(self, kind: str) -> list[str]:
        load_builtins()
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> Iterator[Entry]:
        load_builtins()
        for name in sorted(self._entries[kind]):
            yield self._entries[kind][name]


def unknown_name_message(kind: str, name: str, valid: list[str], *, where: str = "") -> str:
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    location = f"{where}: " if where else ""
    return f"{location}unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(valid)) or '(none)'}."


REGISTRY = Registry()
register = REGISTRY.register

# Packages whose import registers the built-in components.
BUILTIN_PACKAGES = (
    "memfactory.backends",
    "memfactory.modules",
    "memfactory.agents",
    "memfactory.envs",
)
_loaded = False


def load_builtins() -> None:
    """Import the built-in packages once so their decorators have run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)
