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
  starts (:mod:`memfactory.data.sources`: a file, or a named set in ``data_dir`` / assets;
  ``synthetic://`` URIs are parsed, not generated).
* ``env.eval.N``: only entries that are certainly files (a path with a folder, or a name with the
  family's file suffix) or URIs, and that resolve nowhere; a bare set name (``eval_50``,
  ``locomo10``) may be downloaded later and is not needed to train.
* ``judge``: the llm_judge reward without a judge model is already refused by the schema checks.
* vLLM (``model.backend`` or ``trainer.rollout.engine`` vllm): vllm importable here, the model's
  architecture and head size loadable, ``max_model_len`` at least the preset's longest call
  (the planner's estimate) and a KV pool that holds one such sequence (see
  :func:`memfactory.backends.vllm_engine.engine_problems`).
"""

from __future__ import annotations

import json
from pathlib import Path

from memfactory.backends.openai_api import normalise_base_url
from memfactory.backends.shape import DTYPE_BYTES, model_shape, preset_shape
from memfactory.backends.sources import checkpoint_problem, model_path_problem, resolve_model_path
from memfactory.backends.vllm_engine import NOT_INSTALLED, VLLMOptions, engine_problems, vllm_available
from memfactory.config import ModelConfig, Preset
from memfactory.data import sources
from memfactory.errors import ConfigError, DataError, MemFactoryError
from memfactory.registry import REGISTRY


def _strip(message: str, field: str) -> str:
    """Backend messages start with the field name; the problem list already shows it."""
    for prefix in (f"{field} ", "model.path ", "model.checkpoint ", "model.base_url: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def model_problems(cfg: ModelConfig, where: str) -> list[tuple[str, str]]:
    """Problems of one model section (``model`` or ``judge``) that loading it would hit."""
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
        if not cfg.base_url:
            problems.append((f"{where}.base_url", ("the openai backend needs the server's URL, "
                             "e.g. http://127.0.0.1:8000/v1")))
        else:
            try:
                normalise_base_url(cfg.base_url)
            except MemFactoryError as exc:
                problems.append((f"{where}.base_url", _strip(str(exc), f"{where}.base_url")))
    return problems


def _data_message(exc: DataError, name: str) -> str:
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def env_problems(preset: Preset) -> list[tuple[str, str]]:
    """The training source (and file-like eval entries) resolved as the environment will resolve them:
    in the data family its class declares (``data_family``); an environment without one resolves
    its own data."""
    family = getattr(REGISTRY.get("env", preset.env.type).target, "data_family", None)
    if family is None:
        return []
    options = preset.component_options(preset.env, "env")
    data_dir = getattr(options, "data_dir", None)
    problems: list[tuple[str, str]] = []
    entries = [("env.data", options.data, True)]
    entries += [(f"env.eval.{i}", name, False) for i, name in enumerate(getattr(options, "eval", []) or [])]
    for where, name, required in entries:
        try:
            sources.check(name, family, data_dir, required=required)
        except DataError as exc:
            message = _data_message(exc, name)
            problems.append((where, message if required else f"{name!r}: {message}"))
    return problems


def vllm_problems(preset: Preset) -> list[tuple[str, str]]:
    """A vLLM engine the preset asks for, checked before anything starts (imports vllm only if asked)."""
    rollout = preset.trainer.rollout
    uses = [(field, where, options) for field, where, options, used in (
        ("model.backend", "model.options", preset.model.options, preset.model.backend == "vllm"),
        ("trainer.rollout.engine", "trainer.rollout.options", rollout.options, rollout.engine == "vllm"),
    ) if used]
    if not uses:
        return []
    if not vllm_available():
        return [(uses[0][0], NOT_INSTALLED)]
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
