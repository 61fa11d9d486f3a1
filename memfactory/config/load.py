"""Reading, guarding, validating and writing preset YAML.

Presets are data, never code: YAML is read with ``yaml.safe_load`` only. Before anything walks a
document it is guarded (size, alias bombs, nesting, numbers that fit 64 bits, path lengths), then
:func:`parse_preset` runs pydantic's shape checks and :mod:`memfactory.config.checks` (registry
names and options, fields that must agree), reporting every problem at once with its field path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from memfactory.config.checks import (
    cross_field_problems,
    pydantic_problems,
    raw_component_problems,
    registry_problems,
)
from memfactory.config.schema import INT64_MAX, INT64_MIN, Preset
from memfactory.errors import ConfigError
from memfactory.text import is_utf8_text

# Bounds on a preset's YAML before anything walks it: a real preset is a few KB, holds a few hundred
# values and nests a handful of levels. YAML aliases share one object, so a small "billion laughs"
# file can stand for ~10^9 values once expanded (by a dump, a copy, the UI's preview).
MAX_PRESET_BYTES = 4 * 1024 * 1024
MAX_PRESET_VALUES = 100_000  # every value counted as often as aliases repeat it
MAX_PRESET_DEPTH = 64


def _number_problems(data: Any) -> list[tuple[str, str]]:
    """Every number anywhere in the preset (free-form options included) must be finite and fit in a
    signed 64-bit integer: SQLite (the runs database) and torch's seeds take no more, and a float
    that is inf or nan is no setting a run can honour. Walks iteratively (no recursion limit)."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    seen: set[int] = set()  # YAML anchors share one object: walk it once (an alias bomb stays linear)
    while stack:
        path, value = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, str) and not is_utf8_text(value):
            problems.append((path, "not valid Unicode text (holds a lone surrogate such as \\ud800)"))
            continue
        if isinstance(value, dict):
            problems.extend(
                (f"{path}.{key!r}" if path else repr(key), "this key is not valid Unicode text (a lone surrogate)")
                for key in value if isinstance(key, str) and not is_utf8_text(key)
            )
        if isinstance(value, (dict, list)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            shown = str(value) if value.bit_length() <= 256 else f"an integer of {value.bit_length()} bits"
            problems.append((path, f"{shown} does not fit in a signed 64-bit integer (at most {INT64_MAX})"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((path, f"must be a finite number, not {value}"))
        elif isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return sorted(problems)


def _structure_problems(data: Any) -> list[tuple[str, str]]:
    """Refuse what no preset needs and what would explode later: a value that contains itself
    (``&a [*a]``), more than ``MAX_PRESET_VALUES`` values once aliases are expanded (an alias
    bomb), or nesting deeper than ``MAX_PRESET_DEPTH``. Linear in the document's distinct objects
    (each shared object is sized once) and iterative (no recursion limit)."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded values, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]

    def children(node: Any) -> list[Any]:
        return list(node.values()) if isinstance(node, dict) else node

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size, depth = 1, 1
            for child in children(node):
                child_size, child_depth = sizes.get(id(child), (1, 0)) if isinstance(child, (dict, list)) else (1, 0)
                size += child_size
                depth = max(depth, child_depth + 1)
            sizes[key] = (size, depth)
            if size > MAX_PRESET_VALUES:
                message = (f"the preset expands to more than {MAX_PRESET_VALUES} values (YAML aliases repeating "
                           "one another, an \"alias bomb\"?); no preset needs that many")
                return [("", message)]
            if depth > MAX_PRESET_DEPTH:
                return [("", f"the preset nests deeper than {MAX_PRESET_DEPTH} levels; no preset needs that")]
            continue
        if key in sizes:
            continue
        if key in on_path:
            return [("", "a YAML alias refers to a value that contains it (a cycle such as &a [*a]); presets are trees")]
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children(node) if isinstance(child, (dict, list)))
        if len(on_path) > MAX_PRESET_DEPTH:
            return [("", f"the preset nests deeper than {MAX_PRESET_DEPTH} levels; no preset needs that")]
    return []


# Fields that name files or folders: each must be a path the file system can take, or every
# later ``Path.is_file()`` raises OSError (ENAMETOOLONG) instead of answering.
_PATH_FIELDS = (("model", "path"), ("model", "checkpoint"), ("judge", "path"), ("judge", "checkpoint"),
                ("env", "data"), ("env", "data_dir"), ("logging", "runs_dir"), ("logging", "runs_db"))
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255


def _path_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not is_utf8_text(value):
        return None  # the schema and the text check report those
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        return f"is {len(encoded)} bytes long; a path is at most {MAX_PATH_BYTES}"
    if "\x00" in value:
        return "holds a NUL character, which no path can"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in value.replace("\\", "/").split("/")):
        return f"has a name longer than {MAX_NAME_BYTES} bytes between slashes, which no file system takes"
    return None


def _paths_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for section, key in _PATH_FIELDS:
        node = data.get(section)
        if isinstance(node, dict) and (problem := _path_problem(node.get(key))):
            problems.append((f"{section}.{key}", problem))
    env = data.get("env")
    evals = env.get("eval") if isinstance(env, dict) else None
    for i, name in enumerate(evals if isinstance(evals, list) else []):
        if problem := _path_problem(name):
            problems.append((f"env.eval.{i}", problem))
    return problems



def _merge_number_problems(problems: list[tuple[str, str]], numbers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One message a field: "must be finite" replaces a schema's bound message for inf/nan (which
    reads oddly, e.g. "should be less than 1" for nan); a schema's own bound wins for a huge int."""
    finite = {path: message for path, message in numbers if message.startswith("must be a finite")}
    merged = [(path, finite.get(path, message)) for path, message in problems]
    seen = {path for path, _ in merged}
    return merged + [problem for problem in numbers if problem[0] not in seen]


def parse_preset(data: Any, source: str = "<preset>") -> Preset:
    """Validate a preset dict; raise ConfigError listing every problem with its path."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    # Checked on the shared objects (linear even for an alias bomb) and reported with everything
    # else; the bomb itself is never expanded, and a preset with one is never returned.
    structure = _structure_problems(data) or _paths_problems(data)
    numbers = _number_problems(data)
    try:
        preset = Preset.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc)
        seen = {path for path, _ in problems}
        problems += [problem for problem in raw_component_problems(data) if problem[0] not in seen]
        raise ConfigError(source, structure + _merge_number_problems(problems, numbers)) from None
    problems = structure + _merge_number_problems(registry_problems(preset) + cross_field_problems(preset), numbers)
    if problems:
        raise ConfigError(source, problems)
    return preset


def load_preset(path: str | Path, overrides: list[str] | None = None) -> Preset:
    """Read a YAML preset (safe loader only), apply ``key.path=value`` overrides, validate."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ConfigError(str(path), [("", f"cannot open the file: {exc.strerror}")]) from None
    if not found:
        raise ConfigError(str(path), [("", "file not found")])
    size = path.stat().st_size
    if size > MAX_PRESET_BYTES:
        raise ConfigError(str(path), [("", f"the file is {size} bytes; a preset is at most {MAX_PRESET_BYTES}")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [(where, f"malformed YAML: {getattr(exc, 'problem', exc)}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8 text: {exc}")]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits, which Python refuses to parse
        raise ConfigError(str(path), [("", f"malformed YAML: {str(exc)[:200]}")]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(str(path), [("", "malformed YAML: nested too deeply")]) from None
    for override in overrides or []:
        data = apply_override(data, override, str(path))
    return parse_preset(data, str(path))


def apply_override(data: Any, override: str, source: str = "--set") -> dict[str, Any]:
    """``trainer.lr=1e-5`` -> data["trainer"]["lr"] = 1e-5; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(source, [(override, "an override must look like key.path=value")])
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(source, [(key.strip(), f"cannot parse the value: {str(exc)[:200]}")]) from None
    except RecursionError:
        raise ConfigError(source, [(key.strip(), "cannot parse the value: nested too deeply")]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    data = dict(data or {})
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value
    return data


def save_preset(preset: Preset, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(preset.to_yaml(), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a preset
    return path
