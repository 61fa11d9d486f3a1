"""The registry: decorator registration, lookups with spelling hints, one source of names."""

import pytest
from pydantic import BaseModel

from memfactory.registry import REGISTRY, Registry, UnknownNameError


def test_register_and_get_with_schema_and_meta():
    registry = Registry()

    class Options(BaseModel):
        size: int = 3

    @registry.register("module", "toy", description="a toy module", config=Options, slots={"a": ["toy"]})
    class Toy:
        pass

    entry = registry._entries["module"]["toy"]
    assert entry.target is Toy
    assert entry.description == "a toy module"
    assert entry.config is Options
    assert entry.meta == {"slots": {"a": ["toy"]}}


def test_double_registration_of_a_different_target_is_refused():
    registry = Registry()
    registry.register("reward", "x", description="one")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("reward", "x", description="two")(lambda: 2)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown registry kind"):
        Registry().register("widget", "x", description="")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError) as info:
        REGISTRY.get("reward", "sub_emm", where="rewards.sub_emm")
    message = str(info.value)
    assert "rewards.sub_emm" in message
    assert "Did you mean 'sub_em'?" in message


def test_builtins_cover_every_layer():
    for kind, name in [("backend", "hf"), ("agent", "direct"), ("agent", "memagent"), ("module", "recurrent"),
                       ("env", "long_context"), ("reward", "sub_em"), ("reward", "format")]:
        assert name in REGISTRY.names(kind), f"{kind} {name} not registered"
        assert REGISTRY.get(kind, name).description
