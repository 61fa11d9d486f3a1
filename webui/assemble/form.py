"""The Assemble tab's form as data: every field of a preset, generated from the registry and schemas.

Each ``FormField`` knows where its value goes in the preset dict (``path``) and when it applies
(``scope``: e.g. a module's options apply only while its agent is chosen and its slot holds it).
The tab draws one widget per field; turning the widgets' values into a preset, validating it with
``memfactory.config.parse_preset`` and mapping each problem back to its widget happen here,
without Gradio, so they are unit-tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memfactory.backends.sources import SMOLLM2
from memfactory.config import LoggingConfig, ModelConfig, Preset, TrainerConfig, parse_preset
from memfactory.errors import ConfigError
from memfactory.registry import KINDS, REGISTRY
from webui.forms import MISSING, FieldSpec, FieldValueError, field_specs, from_widget, is_default, to_widget
from webui.i18n import t

MODEL_SUGGESTIONS = (SMOLLM2, "tiny://qwen3-mini")
# Where a new form starts somewhere other than the schema's default. A newcomer's first preset
# should run a real model (SmolLM2, embedded and offline) rather than ``tiny://qwen3-mini``, the
# random model the tests use; the schema keeps its default, so the CLI and existing presets (which
# may omit the key) mean what they always meant.
FORM_STARTS: dict[tuple[str, ...], Any] = {("model", "path"): SMOLLM2}
AGENT_KEY, ENV_KEY = "agent", "env.type"


@dataclass(frozen=True)
class FormField:
    key: str  # unique id of the widget
    spec: FieldSpec
    path: tuple[str, ...] | None  # where the value goes in the preset dict (None: a UI-only switch)
    scope: tuple[tuple[str, Any], ...] = ()  # (field key, value) pairs that must all hold
    presence_of: tuple[str, ...] | None = None  # a checkbox that says whether this path is present
    # what the schema applies when the key is absent, where the widget starts elsewhere (FORM_STARTS)
    schema_default: Any = field(default=MISSING, compare=False)

    @property
    def dotted(self) -> str:
        return ".".join(self.path or self.presence_of or ())


@dataclass
class PresetForm:
    fields: list[FormField] = field(default_factory=list)
    agents: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # agent -> slot -> module names
    envs: list[str] = field(default_factory=list)
    rewards: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    empty_kinds: list[str] = field(default_factory=list)

    def index(self, key: str) -> int:
        for i, item in enumerate(self.fields):
            if item.key == key:
                return i
        raise KeyError(key)

    def defaults(self) -> list[Any]:
        return [item.spec.default for item in self.fields]

    def by_key(self, values: list[Any]) -> dict[str, Any]:
        return {item.key: value for item, value in zip(self.fields, values)}

    def active(self, values: list[Any]) -> list[bool]:
        """Which fields apply for the current choices of agent, slots and environment."""
        current = self.by_key(values)
        return [all(current.get(k) == v for k, v in item.scope) for item in self.fields]

    def scope_active(self, scope: tuple[tuple[str, Any], ...], values: list[Any]) -> bool:
        current = self.by_key(values)
        return all(current.get(k) == v for k, v in scope)


def slot_key(agent: str, slot: str) -> str:
    return f"slot:{agent}:{slot}"


def _add(form: PresetForm, key: str, spec: FieldSpec, path: tuple[str, ...] | None, scope=(), presence_of=None):
    schema_default = MISSING
    if path in FORM_STARTS and not spec.required:
        schema_default, spec = spec.default, FieldSpec(**{**spec.__dict__, "default": FORM_STARTS[path]})
    form.fields.append(FormField(key, spec, path, tuple(scope), presence_of, schema_default))


def _at_schema_default(item: FormField, value: Any) -> bool:
    """Left out of the preset: the schema's default applies (always written when the form starts elsewhere)."""
    if item.schema_default is not MISSING:
        return value == item.schema_default
    return is_default(item.spec, value)


def _choice(name: str, choices: list[str], default: Any, info: str, *, required: bool = True) -> FieldSpec:
    return FieldSpec(name, "choice", default, required, False, info, tuple(choices), allow_custom=True)


def _schema_fields(form: PresetForm, prefix: str, model, path: tuple[str, ...], scope=(), overrides=None, skip=()):
    for spec in field_specs(model, overrides):
        if spec.name in skip:
            continue
        _add(form, f"{prefix}.{spec.name}", spec, (*path, spec.name), scope)


def build_form() -> PresetForm:
    """Every field the Assemble tab shows, from what the registry holds right now."""
    form = PresetForm()
    form.empty_kinds = [kind for kind in KINDS if not REGISTRY.names(kind)]
    modules = REGISTRY.names("module")
    form.envs = REGISTRY.names("env")
    form.rewards = REGISTRY.names("reward")
    form.backends = REGISTRY.names("backend")

    _add(form, "name", FieldSpec("name", "str", "my_preset", True, False, "Preset name"), ("name",))
    _add(form, "description", FieldSpec("description", "str", "", False, False, "What this preset is for"),
         ("description",))

    agents = list(REGISTRY.entries("agent"))
    default_agent = "memagent" if "memagent" in [a.name for a in agents] else (agents[0].name if agents else None)
    _add(form, AGENT_KEY, _choice("agent", [a.name for a in agents], default_agent, "Registry name of the agent"),
         ("agent",))
    for entry in agents:
        slots: dict[str, list[str]] = {
            slot: list(allowed) if allowed else list(modules) for slot, allowed in entry.meta.get("slots", {}).items()
        }
        form.agents[entry.name] = slots
        in_agent = ((AGENT_KEY, entry.name),)
        for slot, allowed in slots.items():
            key = slot_key(entry.name, slot)
            _add(form, key, _choice(slot, allowed, allowed[0] if allowed else None, f"Module in the {slot!r} slot"),
                 ("modules", slot, "type"), in_agent)
            for module in allowed:
                if module not in modules:
                    continue
                config = REGISTRY.get("module", module).config
                _schema_fields(form, f"module:{entry.name}:{slot}:{module}", config, ("modules", slot),
                               (*in_agent, (key, module)), skip=("type",))
        _schema_fields(form, f"agent_options:{entry.name}", entry.config, ("agent_options",), in_agent)

    _schema_fields(form, "model", ModelConfig, ("model",), overrides={
        "backend": {"kind": "choice", "choices": tuple(form.backends), "allow_custom": True,
                    "default": "hf" if "hf" in form.backends or not form.backends else form.backends[0]},
        "path": {"kind": "choice", "choices": MODEL_SUGGESTIONS, "allow_custom": True},
    })

    default_env = "long_context" if "long_context" in form.envs else (form.envs[0] if form.envs else None)
    _add(form, ENV_KEY, _choice("type", form.envs, default_env, "Registry name of the environment"), ("env", "type"))
    for env in form.envs:
        _schema_fields(form, f"env:{env}", REGISTRY.get("env", env).config, ("env",), ((ENV_KEY, env),),
                       skip=("type",))

    default_rewards = Preset.model_fields["rewards"].get_default(call_default_factory=True)
    for reward in form.rewards:
        on_key = f"reward_on:{reward}"
        description = REGISTRY.get("reward", reward).description
        _add(form, on_key, FieldSpec(reward, "bool", reward in default_rewards, False, False, description), None,
             presence_of=("rewards", reward))
        _add(form, f"reward:{reward}", FieldSpec("weight", "float", float(default_rewards.get(reward, 1.0)), True,
                                                 False, f"Weight of {reward}"), ("rewards", reward),
             ((on_key, True),))

    _schema_fields(form, "trainer", TrainerConfig, ("trainer",))
    _schema_fields(form, "logging", LoggingConfig, ("logging",))
    return form


# --------------------------------------------------------------------------- values -> preset


def assemble(form: PresetForm, values: list[Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The preset dict the widgets describe, plus problems found while reading them (bad YAML)."""
    data: dict[str, Any] = {"modules": {}, "rewards": {}}
    problems: list[tuple[str, str]] = []
    for item, value, active in zip(form.fields, values, form.active(values)):
        if not active or item.path is None:
            continue
        try:
            converted = from_widget(item.spec, value)
        except (FieldValueError, TypeError, ValueError) as exc:
            problems.append((item.dotted, str(exc)))
            continue
        if converted is MISSING or (item.presence_of is None and _at_schema_default(item, value)):
            continue
        node = data
        for part in item.path[:-1]:
            node = node.setdefault(part, {})
        node[item.path[-1]] = converted
    return _ordered(data), problems


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    order = list(Preset.model_fields)
    return {key: data[key] for key in sorted(data, key=lambda k: order.index(k) if k in order else len(order))}


def validate(data: dict[str, Any]) -> tuple[Preset | None, list[tuple[str, str]]]:
    """``parse_preset`` on the dict: the preset, or every (path, message) problem at once."""
    try:
        return parse_preset(data, "<assemble>"), []
    except ConfigError as exc:
        return None, list(exc.problems)


def check(form: PresetForm, values: list[Any]) -> tuple[dict[str, Any], Preset | None, list[tuple[str, str]]]:
    """Assemble and validate in one go: (dict, preset or None, every problem)."""
    data, problems = assemble(form, values)
    preset, more = validate(data)
    problems = problems + more
    return data, (preset if not problems else None), problems


def problems_markdown(problems: list[tuple[str, str]], lang: str = "en") -> str:
    """The list shown beside the preview: every (path, message) problem, or "valid"."""
    if not problems:
        return t("valid", lang)
    lines = [f"- `{path or '(top level)'}`: {message}" for path, message in problems]
    return t("invalid", lang) + "\n\n" + "\n".join(lines)


def problem_fields(form: PresetForm, values: list[Any], problems: list[tuple[str, str]]) -> dict[int, str]:
    """Field index -> message(s) for each problem that belongs to a visible widget."""
    active = form.active(values)
    paths = {i: item.dotted for i, item in enumerate(form.fields) if active[i] and (item.path or item.presence_of)}
    flagged: dict[int, list[str]] = {}
    for path, message in problems:
        index = _match(paths, path)
        if index is not None:
            flagged.setdefault(index, []).append(message)
    return {i: "; ".join(messages) for i, messages in flagged.items()}


def _match(paths: dict[int, str], path: str) -> int | None:
    if not path:
        return None
    for i, dotted in paths.items():  # exact
        if dotted == path:
            return i
    for i, dotted in paths.items():  # a widget holding a whole sub-tree (YAML box), e.g. trainer.lora
        if path.startswith(dotted + "."):
            return i
    for i, dotted in paths.items():  # a missing container, e.g. modules.memory -> its type dropdown
        if dotted.startswith(path + "."):
            return i
    return None


# --------------------------------------------------------------------------- preset -> values


def to_values(form: PresetForm, data: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Widget values that show ``data`` (a preset dict), plus notes on what the form cannot show."""
    values = form.defaults()
    by_key = {item.key: i for i, item in enumerate(form.fields)}
    agent = data.get("agent")
    values[by_key[AGENT_KEY]] = agent
    env_type = (data.get("env") or {}).get("type") if isinstance(data.get("env"), dict) else None
    values[by_key[ENV_KEY]] = env_type
    for slot, spec in (data.get("modules") or {}).items():
        key = slot_key(str(agent), str(slot))
        if key in by_key and isinstance(spec, dict):
            values[by_key[key]] = spec.get("type")
    used: set[tuple[str, ...]] = set()
    active = form.active(values)
    for i, item in enumerate(form.fields):
        if item.presence_of is not None:
            values[i] = _lookup(data, item.presence_of) is not MISSING
            continue
        if not active[i] or item.path is None:
            continue
        found = _lookup(data, item.path)
        if found is not MISSING:
            values[i] = to_widget(item.spec.kind, found, item.spec.optional)
            used.add(item.path)
        elif item.spec.optional:
            values[i] = to_widget(item.spec.kind, None, True)
        elif item.schema_default is not MISSING:  # the preset relies on the schema's default, not the form's start
            values[i] = item.schema_default
    notes = [f"{'.'.join(path)}: not shown in the form" for path in _leaves(data) if not _covered(path, used)]
    if agent is not None and agent not in form.agents:
        notes.append(f"agent {agent!r} is not registered")
    if env_type is not None and env_type not in form.envs:
        notes.append(f"environment {env_type!r} is not registered")
    for reward in data.get("rewards") or {}:
        if reward not in form.rewards:
            notes.append(f"reward {reward!r} is not registered")
    return values, notes


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return MISSING
        data = data[part]
    return data


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(data, dict):  # an empty mapping holds nothing to show
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*prefix, str(key)))]
    return [prefix] if prefix else []


def _covered(path: tuple[str, ...], used: set[tuple[str, ...]]) -> bool:
    if path[0] in ("agent", "rewards") or path[-1] == "type":
        return True  # shown by the choosers and reward switches
    return any(path[: len(u)] == u for u in used)
