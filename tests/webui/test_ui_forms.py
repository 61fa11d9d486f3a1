"""Form fields from pydantic schemas and widget values back to data (webui.forms)."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from webui.forms import MISSING, FieldValueError, field_specs, from_widget, is_default


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["a", "b"] = Field("a", description="which mode")
    flag: bool = True
    count: int = Field(3, ge=1, description="how many")
    ratio: float = 0.5
    label: str = "x"
    cap: int | None = Field(None, ge=1)
    tags: list[str] = Field(default_factory=lambda: ["p", "q"])
    needed: str = Field(description="must be given")


def test_field_specs_map_types_to_widgets():
    specs = {s.name: s for s in field_specs(Options)}
    assert specs["mode"].kind == "choice" and specs["mode"].choices == ("a", "b") and specs["mode"].info == "which mode"
    assert specs["flag"].kind == "bool" and specs["flag"].default is True
    assert specs["count"].kind == "int" and specs["count"].default == 3
    assert specs["ratio"].kind == "float"
    assert specs["label"].kind == "str" and specs["label"].default == "x"
    assert specs["cap"].kind == "int" and specs["cap"].optional and specs["cap"].default == ""
    assert specs["tags"].kind == "yaml" and yaml.safe_load(specs["tags"].default) == ["p", "q"]
    assert specs["needed"].required and "(required)" in specs["needed"].info


def test_widget_values_back_to_data():
    spec = {s.name: s for s in field_specs(Options)}
    # a changed value comes back typed; one left at its default is left out of a preset (the schema supplies it)
    assert is_default(spec["mode"], "a") and not is_default(spec["mode"], "b") and from_widget(spec["mode"], "b") == "b"
    assert is_default(spec["count"], 3.0) and not is_default(spec["count"], 5.0)
    assert from_widget(spec["count"], 5.0) == 5 and isinstance(from_widget(spec["count"], 5.0), int)
    assert from_widget(spec["flag"], False) is False and not is_default(spec["flag"], False)
    assert from_widget(spec["tags"], "[r]") == ["r"] and is_default(spec["tags"], spec["tags"].default)
    assert from_widget(spec["needed"], "given") == "given" and not is_default(spec["needed"], "given")
    data = {name: from_widget(spec[name], value) for name, value in
            (("mode", "b"), ("flag", False), ("count", 5.0), ("tags", "[r]"), ("needed", "given"))}
    assert Options.model_validate(data).count == 5
    assert from_widget(spec["cap"], "7") == 7 and from_widget(spec["cap"], "") is None
    assert from_widget(spec["needed"], "") is MISSING
    with pytest.raises(FieldValueError, match="expected a number"):
        from_widget(spec["cap"], "seven")
    with pytest.raises(FieldValueError, match="YAML"):
        from_widget(spec["tags"], "[unclosed")
