"""Form fields generated from pydantic schemas, and the conversion of widget values back to data.

Kept free of Gradio so the mapping (Literal -> dropdown, bool -> checkbox, int/float -> number,
anything else -> a YAML text box) and the value coercion are unit-testable without a browser.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

Kind = Literal["choice", "bool", "int", "float", "str", "yaml"]


@dataclass(frozen=True)
class FieldSpec:
    """One form field: how to draw it and how to read its value back."""

    name: str
    kind: Kind
    default: Any  # the widget's initial value (already in widget form)
    required: bool
    optional: bool  # None is an accepted value
    info: str = ""
    choices: tuple[Any, ...] = ()
    allow_custom: bool = False  # choice field that also accepts typed values (suggestions)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return annotation, optional
    return annotation, False


def field_specs(model: type[BaseModel], overrides: dict[str, dict[str, Any]] | None = None) -> list[FieldSpec]:
    """The fields of ``model`` in declaration order; ``overrides`` replace attributes per field name."""
    specs = []
    for name, field in model.model_fields.items():
        annotation, optional = _strip_optional(field.annotation)
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        choices: tuple[Any, ...] = ()
        if typing.get_origin(annotation) is Literal:
            kind: Kind = "choice"
            choices = tuple(typing.get_args(annotation))
        elif annotation is bool:
            kind = "bool"
        elif annotation is int:
            kind = "int"
        elif annotation is float:
            kind = "float"
        elif annotation is str:
            kind = "str"
        else:
            kind = "yaml"
        info = field.description or ""
        if required:
            info = f"{info} (required)".strip()
        spec = FieldSpec(name, kind, to_widget(kind, default, optional), required, optional, info, choices)
        if overrides and name in overrides:
            spec = FieldSpec(**{**spec.__dict__, **overrides[name]})
        specs.append(spec)
    return specs


def to_widget(kind: Kind, value: Any, optional: bool = False) -> Any:
    """A data value as the widget shows it (YAML text for structured values, "" for a missing str).

    An optional number is drawn as a text box (a number widget cannot be left unset): "" means None.
    """
    if kind in ("int", "float") and optional:
        return "" if value is None else str(value)
    if kind == "yaml":
        if value is None or value is PydanticUndefined:
            return ""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_none=True)  # as presets are dumped
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True).strip()
    if kind == "str":
        return "" if value is None else str(value)
    if kind == "bool":
        return bool(value)
    return value


class FieldValueError(ValueError):
    """A widget value that cannot become data (e.g. malformed YAML)."""


_MISSING = object()


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget value as data; returns ``MISSING`` when the key should be left out of the preset."""
    if spec.kind == "yaml":
        text = (value or "").strip() if isinstance(value, str) else value
        if text in ("", None):
            return None if spec.optional else MISSING
        if not isinstance(text, str):
            return text
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FieldValueError(f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if spec.kind in ("int", "float"):
        if value is None or value == "":
            return None if spec.optional else MISSING
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FieldValueError(f"expected a number, got {value!r}") from None
        if spec.kind == "int" and number.is_integer():
            return int(number)
        return number  # pydantic reports a fractional int with the field path
    if spec.kind == "str":
        text = "" if value is None else str(value)
        if text == "":
            return None if spec.optional else (MISSING if spec.required else "")
        return text
    if spec.kind == "choice":
        if value in (None, ""):
            return None if spec.optional else MISSING
        return value
    return bool(value)


MISSING = _MISSING


def is_default(spec: FieldSpec, value: Any) -> bool:
    """An optional field left at its default: left out of the preset so the schema's default applies."""
    if spec.required:
        return False
    if spec.kind in ("int", "float") and value not in (None, "") and spec.default is not None:
        try:
            return float(value) == float(spec.default)
        except (TypeError, ValueError):
            return False
    if spec.kind == "yaml" and isinstance(value, str) and isinstance(spec.default, str):
        return value.strip() == spec.default.strip()
    return value == spec.default or (value in (None, "") and spec.default in (None, ""))
