"""Fixtures of the Assemble tab's tests: test components in the real registry, and form values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from memfactory.registry import REGISTRY
from webui.assemble.form import PresetForm


class ModA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(4, ge=1, description="size of A")


class ModB(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["x", "y"] = "x"


class EnvOpts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field("synthetic://x", description="where samples come from")
    eval: list[str] = Field(default_factory=list)


@pytest.fixture()
def registered():
    """Test components in the real registry (removed afterwards so other tests see the usual set)."""
    entries = [
        ("module", "uit_a", ModA, {}), ("module", "uit_b", ModB, {}),
        ("agent", "uit_agent", None, {"slots": {"mem": ["uit_a", "uit_b"], "aux": ["uit_b"]}}),
        ("env", "uit_env", EnvOpts, {}), ("reward", "uit_reward", None, {}), ("backend", "uit_backend", None, {}),
    ]
    for kind, name, config, meta in entries:
        REGISTRY.register(kind, name, description=f"test {kind}", config=config, **meta)(type(name, (), {}))
    yield
    for kind, name, _, _ in entries:
        REGISTRY._entries[kind].pop(name, None)


@pytest.fixture()
def values_for() -> Callable[..., list[Any]]:
    """``values_for(form, **{field key: value})``: the form's defaults with those fields changed."""

    def values(form: PresetForm, **changes: Any) -> list[Any]:
        out = form.defaults()
        for key, value in changes.items():
            out[form.index(key)] = value
        return out

    return values


@pytest.fixture()
def uit_values(registered, values_for) -> Callable[..., list[Any]]:
    """Values choosing the test agent, environment and reward (and no other reward), then ``changes``."""

    def values(form: PresetForm, **changes: Any) -> list[Any]:
        base = {"agent": "uit_agent", "env.type": "uit_env", "reward_on:uit_reward": True,
                **{f"reward_on:{r}": False for r in form.rewards if r != "uit_reward"}}
        return values_for(form, **{**base, **changes})

    return values
