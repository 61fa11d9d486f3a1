"""What a run's start-up would refuse, checked without loading a model or reading data.

``presets validate`` runs these checks after the schema checks, ``memfactory train`` runs them
before it creates the run folder and the runs-database row, so a preset that cannot start never
leaves a failed run behind. Each problem names its field:

* ``model.path`` / ``judge.path`` (backends hf and vllm): a path that is certainly local (starts
  with ``/ . ~``, has more than one ``/``) or any path while ``HF_HUB_OFFLINE`` is set must be a
  folder with ``config.json``; built-in names must be available; hub ids are not looked up.
* ``model.checkpoint`` / ``judge.checkpoint``: an existing folder with an adapter or weights.
* ``model.base_url`` / ``judge.base_url`` (backend openai): present and an http(s) URL.
* ``env.data``: the training source, resolved exactly as the environment resolves it when training
  starts (a file for long_context; a file or a named set in ``data_dir`` / assets for memory_bank;
  ``synthetic://`` URIs are parsed, not generated).
* ``env.eval.N``: only entries that are certainly files (a .json/.jsonl/.parquet suffix or a path
  separator) and that resolve nowhere; a bare set name (``eval_50``, ``locomo10``) may be
  downloaded later and is not needed to train.
* ``judge``: the llm_judge reward without a judge model is already refused by the schema checks.
* vLLM (``model.backend`` or ``trainer.rollout.engine`` vllm): vllm importable here, the model's
  architecture and head size loadable, ``max_model_len`` at least the preset's longest call
  (the planner's estimate) and a KV pool that holds one such sequence (see
  :func:`memfactory.backends.vllm_engine.engine_problems`).
"""

from __future__ import annotations

from pathlib import Path

from memfactory.config import ModelConfig, Preset
from memfactory.errors import ConfigError, DataError, MemFactoryError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def _strip(message: str, field: str) -> str:
    """Backend messages start with the field name; the problem list already shows it."""
    for prefix in (f"{field} ", "model.path ", "model.checkpoint ", "model.base_url: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def model_problems(cfg: ModelConfig, where: str) -> list[tuple[str, str]]:
    """Problems of one model section (``model`` or ``judge``) that loading it would hit."""
    from memfactory.backends.sources import checkpoint_problem, model_path_problem

    problems: list[tuple[str, str]] = []
    if cfg.backend in ("hf", "vllm"):
        problem = model_path_problem(cfg.path)
        if problem:
            problems.append((f"{where}.path", _strip(problem, f"{where}.path")))
        if cfg.checkpoint:
            problem = checkpoint_problem(cfg.checkpoint, f"{where}.checkpoint")
            if problem:
                problems.append((f"{where}.checkpoint", _strip(problem, f"{where}.checkpoint")))
    elif cfg.backend == "openai":
        from memfactory.backends.openai_api import normalise_base_url

        if not cfg.base_url:
            problems.append((f"{where}.base_url", ("the openai backend needs the server's URL, "
                             "e.g. http://127.0.0.1:8000/v1")))
        else:
            try:
                normalise_base_url(cfg.base_url)
            except MemFactoryError as exc:
                problems.append((f"{where}.base_url", _strip(str(exc), f"{where}.base_url")))
    return problems


def _looks_like_file(name: str) -> bool:
    return Path(name).suffix.lower() in DATA_SUFFIXES or "/" in name or "\\" in name


def _data_message(exc: DataError, name: str) -> str:
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def env_problems(preset: Preset) -> list[tuple[str, str]]:
    """The training source (and file-like eval entries) resolved as the environment will resolve them."""
    problems: list[tuple[str, str]] = []
    env_type = preset.env.type
    if env_type not in ("long_context", "memory_bank"):
        return problems  # an environment we know nothing about resolves its own data
    options = preset.component_options(preset.env, "env")
    data_dir = getattr(options, "data_dir", None)
    if env_type == "long_context":
        from memfactory.data.memagent import find_eval_set
        from memfactory.data.synth import parse_synthetic_uri

        def resolve_train(name: str) -> None:
            if name.startswith("synthetic://"):
                parse_synthetic_uri(name)
                return
            path = Path(name)
            if not path.is_file():
                raise DataError(name, "file not found (long_context reads its training source from a file "
                                "or a synthetic:// URI)")
            if path.suffix.lower() not in DATA_SUFFIXES:
                raise DataError(name, f"unsupported file type {path.suffix or '(none)'!r}; "
                                "expected .json, .jsonl or .parquet")

        def resolve_eval(name: str) -> None:
            if name.startswith("synthetic://"):
                parse_synthetic_uri(name)
            elif _looks_like_file(name):
                find_eval_set(name, data_dir)
    else:
        from memfactory.envs.memory_bank import find_locomo

        def resolve_train(name: str) -> None:
            find_locomo(name, data_dir)

        def resolve_eval(name: str) -> None:
            if not name.startswith("synthetic://") and _looks_like_file(name):
                find_locomo(name, data_dir)

    try:
        resolve_train(options.data)
    except DataError as exc:
        problems.append(("env.data", _data_message(exc, options.data)))
    for i, name in enumerate(getattr(options, "eval", []) or []):
        try:
            resolve_eval(name)
        except DataError as exc:
            problems.append((f"env.eval.{i}", f"{name!r}: {_data_message(exc, name)}"))
    return problems


def vllm_problems(preset: Preset) -> list[tuple[str, str]]:
    """A vLLM engine the preset asks for, checked before anything starts (imports vllm only if asked)."""
    from memfactory.backends.vllm_engine import NOT_INSTALLED, VLLMOptions, engine_problems, vllm_available

    rollout = preset.trainer.rollout
    uses = [(field, where, options) for field, where, options, used in (
        ("model.backend", "model.options", preset.model.options, preset.model.backend == "vllm"),
        ("trainer.rollout.engine", "trainer.rollout.options", rollout.options, rollout.engine == "vllm"),
    ) if used]
    if not uses:
        return []
    if not vllm_available():
        return [(uses[0][0], NOT_INSTALLED)]
    import json

    from memfactory.backends.sources import model_path_problem, resolve_model_path
    from memfactory.planner import DTYPE_BYTES, model_shape, preset_shape

    if model_path_problem(preset.model.path):
        return []  # model_problems reports it
    shape = model_shape(preset.model.path, preset.model.seed)
    folder = Path(resolve_model_path(preset.model.path, seed=preset.model.seed))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder.is_dir() else {}
    prompt, response, _ = preset_shape(preset)
    problems: list[tuple[str, str]] = []
    for _field, where, options in uses:
        dtype = (rollout.dtype if where.startswith("trainer") else None) or preset.model.dtype
        dtype_bytes = DTYPE_BYTES.get(shape.dtype if dtype == "auto" else dtype, 4)
        problems += engine_problems(
            VLLMOptions.model_validate(options), where=where, architectures=list(config.get("architectures") or []),
            head_dim=shape.head_dim, kv_bytes_per_token=shape.kv_bytes_per_token(dtype_bytes),
            weight_bytes=shape.parameters * dtype_bytes, model_len=config.get("max_position_embeddings"),
            longest_call=(prompt, response),
        )
    return list(dict.fromkeys(problems))  # model.path problems once even when both sections use vLLM


def preflight_problems(preset: Preset) -> list[tuple[str, str]]:
    """Every start-up problem of a schema-valid preset, each with its field path."""
    problems = model_problems(preset.model, "model")
    if preset.judge is not None:
        problems += model_problems(preset.judge, "judge")
    problems += env_problems(preset)
    problems += vllm_problems(preset)
    return problems


def check_preflight(preset: Preset, source: str = "<preset>") -> None:
    """Raise ConfigError (every problem with its field) when the run could not start."""
    problems = preflight_problems(preset)
    if problems:
        raise ConfigError(source, problems)
