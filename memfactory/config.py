"""A preset: the whole description of an agent, its model, data, rewards and training recipe.

Presets are data, never code: YAML is read with ``yaml.safe_load`` only. Validation happens in
two passes — pydantic checks the shape, then every registry name (agent, module types, env type,
reward names, backend) is looked up and its own options are checked against the schema that
component registered. Every problem is reported with its field path, and a misspelt name with
the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memfactory.errors import ConfigError
from memfactory.registry import REGISTRY, unknown_name_message
from memfactory.text import is_utf8_text

# Upper bounds of the numeric fields: generous, but what a run can honour. Floats must be finite
# everywhere (``allow_inf_nan=False``); every integer must fit SQLite's signed 64 bits, which the
# runs database stores some of them in (see ``_number_problems``).
MAX_STEPS = 10_000_000  # optimizer steps (and warm-up, save/sample intervals)
MAX_TOKENS = 1_048_576  # any token cap: the longest context a model could have (2**20)
MAX_GROUP_SIZE = 1024  # rollouts per prompt
MAX_SIZE = 65_536  # prompts per step, micro-batch sizes, accumulation
MAX_LR = 1.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Bounds on a preset's YAML before anything walks it: a real preset is a few KB, holds a few hundred
# values and nests a handful of levels. YAML aliases share one object, so a small "billion laughs"
# file can stand for ~10^9 values once expanded (by a dump, a copy, the UI's preview).
MAX_PRESET_BYTES = 4 * 1024 * 1024
MAX_PRESET_VALUES = 100_000  # every value counted as often as aliases repeat it
MAX_PRESET_DEPTH = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ComponentSpec(BaseModel):
    """``{type: <registry name>, ...options}``; the options are checked against that type's schema."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Registry name of the component")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Strict):
    backend: str = Field("hf", description="Registry name of the generation backend (hf, openai, vllm)")
    path: str = Field(
        "tiny://qwen3-mini",
        description="Local folder, hub id, tiny://qwen3-mini, or smollm2-135m-instruct; the served model name for openai",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype")
    attn: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto picks flash_attention_2 when installed on CUDA, else sdpa"
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never stored)")
    checkpoint: str | None = Field(None, description="A run's checkpoint folder to load instead of the base weights")
    enable_thinking: bool = Field(False, description="Qwen3-style thinking in the chat template")
    hub_kernels: bool = Field(
        False,
        description=("Let transformers swap layers for Hugging Face Hub kernels (the `kernels` package) when it loads "
                     "the model. Off by default: those kernels are downloaded at load time, which fails offline"),
    )
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX, description="Seed for tiny:// model construction")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (e.g. timeout, concurrency for openai)"
    )


class EnvConfig(ComponentSpec):
    """``type`` names an environment; ``data`` and ``eval`` say where samples come from."""


class LoraConfig(Strict):
    r: int = Field(16, ge=1, le=MAX_SIZE, description="LoRA rank")
    alpha: int = Field(32, ge=1, le=MAX_TOKENS, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the frozen base model in 4-bit (nf4) or 8-bit; needs bitsandbytes and CUDA"
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        description="Module names that get adapters",
    )


class RolloutConfig(Strict):
    """Which engine samples the rollouts and how often it receives the policy's weights."""

    engine: Literal["policy", "hf", "vllm"] = Field(
        "policy",
        description="policy = the training model generates; hf = a separate transformers copy; "
        "vllm = an in-process vLLM engine (GPU, extra memfactory[vllm]) as in TRL's colocate mode",
    )
    sync_every: int = Field(1, ge=1, le=MAX_STEPS, description="Push the policy's weights into a separate engine every N optimizer steps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="The engine's weights dtype (None = model.dtype)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Engine options, e.g. gpu_memory_utilization / max_model_len for vllm"
    )
    importance_sampling: bool | None = Field(
        None, description="Weight each token's loss by min(exp(policy - engine log-prob), cap), as TRL/verl do for "
        "vLLM (step metrics update/is_weight/...); None = on for a separate engine (hf, vllm), off for policy",
    )
    importance_sampling_cap: float = Field(3.0, ge=1.0, le=1e6, description="Truncation cap of that weight (TRL: 3)")

    @property
    def corrects_sampling(self) -> bool:
        """Whether the update applies the importance-sampling correction."""
        return self.engine != "policy" if self.importance_sampling is None else self.importance_sampling


class TrainerConfig(Strict):
    algo: Literal["grpo"] = "grpo"
    steps: int = Field(60, ge=1, le=MAX_STEPS, description="Optimizer steps (not questions)")
    group_size: int = Field(8, ge=1, le=MAX_GROUP_SIZE, description="Rollouts per prompt (GRPO group)")
    batch_size: int = Field(4, ge=1, le=MAX_SIZE, description="Prompts per step")
    lr: float = Field(1e-4, gt=0, le=MAX_LR, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear learning-rate warm-up")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="Schedule after warm-up")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the frozen reference (0 = no reference model)")
    kl_bias_correction: bool = Field(
        True, description="Weight the k3 KL term by the policy ratio (TRL's default); off = plain k3 (MemAgent/verl)"
    )
    kl_clamp: float | None = Field(
        None, gt=0, description="Clamp each token's k3 KL to [-c, c] (MemAgent/verl low_var_kl: 10); None = no clamp"
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the ratio")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher); defaults to epsilon")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field("grpo", description="Loss normalisation as in TRL")
    scale_rewards: bool = Field(True, description="Divide advantages by the group std (off = Dr. GRPO / MemAgent)")
    num_iterations: int = Field(1, ge=1, le=MAX_GROUP_SIZE, description="Policy updates per rollout batch")
    grad_accum: int = Field(1, ge=1, le=MAX_SIZE, description="Micro-batches per optimizer step")
    micro_batch_size: int = Field(8, ge=1, le=MAX_SIZE, description="Sequences per forward/backward pass")
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, ge=0, description="Rollout sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1, le=MAX_TOKENS, description="Cap on each model call's response")
    stop: list[str] = Field(default_factory=list, description="Stop strings for rollouts, e.g. '}' after a \\boxed{ prefix")
    credit: Literal["all_calls", "final_only"] = Field(
        "all_calls", description="Which calls of a trajectory get its advantage"
    )
    skip_equal_groups: bool = Field(True, description="Drop groups whose rewards are all equal (no signal)")
    precision: Literal["auto", "fp32", "bf16_mixed", "bf16_pure"] = Field(
        "auto",
        description="fp32; bf16_mixed = fp32 master weights and optimizer state, bf16 autocast compute; "
        "bf16_pure = AdamW on bf16 weights (loses small updates); auto = bf16_mixed for bf16 weights, else fp32",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: far less memory, ~30% more compute"
    )
    shared_prompt_forward: bool = Field(
        True,
        description="In the policy update, score the rows of a micro-batch that share one prompt (a GRPO group) "
        "with one forward of the prompt and its KV cache repeated for the rows; same values and gradients. "
        "Applies to single-process (not DDP/FSDP) training without gradient checkpointing, and to no-grad "
        "old/reference scoring always; step metric update/shared_prompt_fraction",
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout engine and its weight sync")
    save_every: int = Field(20, ge=1, le=MAX_STEPS, description="Checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, le=MAX_SIZE)
    sample_every: int = Field(5, ge=1, le=MAX_STEPS, description="Write whole trajectories to samples.jsonl every N steps")
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)


class LoggingConfig(Strict):
    swanlab: Literal["local", "offline", "cloud", "disabled"] = Field(
        "offline", description="SwanLab mode; offline and local never ask for a login"
    )
    runs_dir: str = Field("runs", description="Folder that holds one sub-folder per run")
    runs_db: str = Field("runs/memfactory.db", description="SQLite runs database")
    project: str = "memfactory"


class Preset(Strict):
    name: str = Field(description="Preset name")
    description: str = ""
    agent: str = Field(description="Registry name of the agent")
    modules: dict[str, ComponentSpec] = Field(default_factory=dict, description="Module slot -> module spec")
    agent_options: dict[str, Any] = Field(default_factory=dict, description="Options for the agent itself")
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig
    rewards: dict[str, float] = Field(default_factory=lambda: {"sub_em": 1.0}, description="Reward name -> weight")
    judge: ModelConfig | None = Field(None, description="Model behind the llm_judge reward (any backend)")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def component_options(self, spec: ComponentSpec, kind: str) -> BaseModel:
        """The spec's options parsed with the schema its registry entry declared."""
        return REGISTRY.get(kind, spec.type).config.model_validate(spec.options)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- validation


def _pydantic_problems(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
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
        for path, message in _pydantic_problems(exc, where):
            if message == "unknown key":
                key = path.rsplit(".", 1)[-1]
                close = difflib.get_close_matches(key, list(entry.config.model_fields), n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean {close[0]!r}?"
            problems.append((path, message))
        return problems
    return []


def _raw_component_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
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


def _registry_problems(preset: Preset) -> list[tuple[str, str]]:
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
    if rollout.engine == "policy" and rollout.importance_sampling:
        problems.append(("trainer.rollout.importance_sampling", ("engine 'policy' samples with the policy itself: "
                         "no engine mismatch to correct; leave it unset or pick engine hf or vllm")))
    for reward in preset.rewards:
        check("reward", reward, f"rewards.{reward}")
    from memfactory.envs.rewards import eval_only_problems  # the reward classes say which are eval-only

    problems.extend(eval_only_problems(preset.rewards))
    if "llm_judge" in preset.rewards and preset.judge is None:
        problems.append(("judge", "the llm_judge reward needs a judge model: judge: {backend: openai, base_url: ..., path: ...}"))
    if preset.judge is not None:
        judge = check("backend", preset.judge.backend, "judge.backend")
        if judge is not None:
            check_options(judge, preset.judge.options, "judge.options")
    return problems


def _number_problems(data: Any) -> list[tuple[str, str]]:
    """Every number anywhere in the preset (free-form options included) must be finite and fit in a
    signed 64-bit integer: SQLite (the runs database) and torch's seeds take no more, and a float
    that is inf or nan is no setting a run can honour. Walks iteratively (no recursion limit)."""
    import math

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
        problems = _pydantic_problems(exc)
        seen = {path for path, _ in problems}
        problems += [problem for problem in _raw_component_problems(data) if problem[0] not in seen]
        raise ConfigError(source, structure + _merge_number_problems(problems, numbers)) from None
    problems = structure + _merge_number_problems(_registry_problems(preset), numbers)
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
