"""What to run: the one place that turns a preset file, a model, a checkpoint or an endpoint into the
preset a command or the web UI runs.

* :func:`resolve_target`: a preset YAML, or a model (folder, hub id, built-in name) wrapped in the
  default MemAgent preset; a model that points nowhere is refused by
  :func:`memfactory.backends.sources.model_path_problem`, before anything loads.
* :func:`resolve_checkpoint`: a run id, a run folder, a ``step-N`` checkpoint folder (or its
  ``model/``) or a weights folder -> :class:`Checkpoint`, by one set of rules for ``memfactory
  eval``, ``memfactory export`` and the Playground.
* :func:`with_checkpoint` / :func:`with_model` / :func:`endpoint_preset`: the model section swapped
  (a checkpoint, another base model, an OpenAI-compatible endpoint); :func:`workflow_preset` is the
  Playground's composition of them.
* :func:`without_chunk_cap`, :func:`make_rows`: ``memfactory eval``'s rows (targets x checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from memfactory.backends.sources import BUILTIN_PATHS, model_path_problem
from memfactory.config import LoggingConfig, ModelConfig, Preset, apply_override, load_preset, parse_preset
from memfactory.errors import MemFactoryError
from memfactory.tracking.metrics import RunDir
from memfactory.tracking.process import slugify
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.layout import STATE_FILE, latest_checkpoint

PAPER_SETS = ("eval_50", "eval_100", "eval_fwe_16384")
PRESET_SUFFIXES = (".yaml", ".yml")
DEFAULT_RUNS_DB: str = LoggingConfig.model_fields["runs_db"].default
BASE_WEIGHTS = ("none", "base", "")  # checkpoint values that mean "the base weights"

T = TypeVar("T", Preset, ModelConfig)


# --------------------------------------------------------------------------- presets and models


def default_preset_data(model: str) -> dict[str, Any]:
    """A MemAgent preset around ``model`` with the paper's eval recipe (chunks of 2500, no cap)."""
    return {
        "name": f"memagent_{slugify(Path(model).name or model)}",
        "description": f"MemAgent over {model} (default eval preset)",
        "agent": "memagent",
        "modules": {
            "memory": {"type": "recurrent", "chunk_tokens": 2500, "memory_tokens": 2048, "answer_tokens": 2048}
        },
        "model": {"backend": "hf", "path": model, "dtype": "auto", "attn": "auto"},
        "env": {"type": "long_context", "eval": list(PAPER_SETS)},
        "rewards": {"sub_em": 1.0},
        "trainer": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 2048},
        "logging": {"swanlab": "disabled"},
    }


def is_preset_path(target: str) -> bool:
    return Path(target).suffix.lower() in PRESET_SUFFIXES


def model_problem(target: str) -> str | None:
    """Why ``target`` names no model, or None. The loader's own rules
    (:func:`~memfactory.backends.sources.model_path_problem`), plus one for a command line that also
    takes preset files: a bare name that is not a built-in model is taken for a misspelt preset,
    not a hub id (those read ``owner/name``)."""
    problem = model_path_problem(target)
    if problem is not None:
        return problem.removeprefix(f"model.path {target!r} ")
    bare = "/" not in target and "\\" not in target and target.lower() not in BUILTIN_PATHS
    if bare and not Path(target).expanduser().exists():
        return (f"is not a preset (.yaml), a model folder, a built-in model ({', '.join(BUILTIN_PATHS)}) "
                "or a hub id (owner/name)")
    return None


def resolve_target(target: str, overrides: Sequence[str] = ()) -> Preset:
    """A preset YAML file, or a model path / built-in model name wrapped in the default MemAgent preset."""
    if is_preset_path(target):
        return load_preset(target, list(overrides))
    problem = model_problem(target)
    if problem:
        raise MemFactoryError(f"unknown model {target!r}: {problem}")
    data = default_preset_data(target)
    for override in overrides:
        data = apply_override(data, override, "--set")
    return parse_preset(data, f"default MemAgent preset for {target}")


def _with_model(target: T, model: ModelConfig) -> T:
    return target.model_copy(update={"model": model}) if isinstance(target, Preset) else model


def _model_of(target: Preset | ModelConfig) -> ModelConfig:
    return target.model if isinstance(target, Preset) else target


def with_checkpoint(target: T, checkpoint: str | Path | None) -> T:
    """The preset (or model section) loading ``checkpoint``'s weights; None = the base weights."""
    folder = None if checkpoint is None else str(checkpoint)
    return _with_model(target, _model_of(target).model_copy(update={"checkpoint": folder}))


def with_model(target: T, path: str) -> T:
    """Another local base model: a checkpoint the preset names was trained on its own model, so it is
    dropped. A local engine (hf, vllm) stays what it was with its options; an endpoint becomes hf."""
    model = _model_of(target)
    local = model.backend if model.backend in ("hf", "vllm") else "hf"
    options = dict(model.options) if model.backend == local else {}
    swapped = model.model_copy(update={"backend": local, "path": path, "base_url": None, "options": options,
                                       "checkpoint": None})
    return _with_model(target, swapped)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server: its URL, the served model's name and where its key is."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    options: Mapping[str, Any] = field(default_factory=dict)


def direct_preset(name: str = "direct") -> Preset:
    """The agent that answers from the whole context, with no memory: what a bare endpoint runs."""
    return parse_preset({"name": name, "agent": "direct", "env": {"type": "long_context"},
                         "logging": {"swanlab": "disabled"}}, "endpoint workflow")


def endpoint_preset(endpoint: Endpoint, preset: Preset | None = None) -> Preset:
    """``preset`` (default: :func:`direct_preset`) answering through ``endpoint`` instead of a local model."""
    if not endpoint.model.strip():
        raise MemFactoryError(f"endpoint {endpoint.base_url}: give the served model name")
    preset = preset if preset is not None else direct_preset()
    model = preset.model.model_copy(update={
        "backend": "openai", "base_url": endpoint.base_url, "path": endpoint.model,
        "api_key_env": endpoint.api_key_env or "OPENAI_API_KEY", "options": dict(endpoint.options),
        "checkpoint": None,
    })
    return preset.model_copy(update={"model": model})


def workflow_preset(
    preset: Preset | None,
    *,
    endpoint: Endpoint | None = None,
    model: str = "",
    checkpoint: str = "",
    runs_db: str | Path = DEFAULT_RUNS_DB,
) -> Preset:
    """A preset with the model swapped the way a comparison asks: through an endpoint, or on another
    local base ``model``, and/or with a trained ``checkpoint`` (a run id or a folder, see
    :func:`resolve_checkpoint`). ``preset`` None needs an endpoint (the :func:`direct_preset` answers)."""
    if endpoint is not None:
        if checkpoint:
            raise MemFactoryError("a checkpoint applies to a local model, not to an endpoint")
        return endpoint_preset(endpoint, preset)
    if preset is None:
        raise MemFactoryError("choose a preset (or give an endpoint's base URL)")
    if model:
        preset = with_model(preset, model)
    if checkpoint:
        preset = with_checkpoint(preset, resolve_checkpoint(checkpoint, runs_db).model_dir)
    return preset


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """Trained weights to load, and what they belong to when known."""

    model_dir: Path  # what a backend loads: a peft adapter or full weights
    path: Path | None = None  # the run's step-N folder (holds trainer_state.json); None for a bare weights folder
    run_dir: Path | None = None  # the run folder (holds preset.yaml), when known
    run_id: str | None = None

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()

    @property
    def step(self) -> int:
        if self.path is None:
            raise MemFactoryError(f"{self.model_dir} is a weights folder, not a run's checkpoint: it has no step")
        return int(json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))["step"])


def _run_folder(path: Path) -> Path | None:
    run_dir = RunDir(path)
    return path if run_dir.checkpoints.is_dir() or run_dir.preset_path.is_file() else None


def _newest(run_dir: Path, run_id: str | None) -> Checkpoint:
    newest = latest_checkpoint(run_dir)
    if newest is None:
        name = f"run {run_id!r}" if run_id else f"run folder {str(run_dir)!r}"
        raise MemFactoryError(
            f"{name} has no complete checkpoint in {RunDir(run_dir).checkpoints}; checkpoints are written every "
            "trainer.save_every steps and at the last step"
        )
    return Checkpoint(newest / "model", newest, run_dir, run_id)


def _step_folder(path: Path) -> Checkpoint:
    parent = path.parent.parent if path.parent.name == "checkpoints" else None
    run_dir = parent if parent is not None and RunDir(parent).preset_path.is_file() else None
    return Checkpoint(path / "model", path, run_dir)


def resolve_checkpoint(target: str, runs_db: str | Path = DEFAULT_RUNS_DB) -> Checkpoint:
    """A checkpoint named by a command line or a form, by one set of rules:

    * a ``step-N`` folder (it holds ``trainer_state.json``), or its ``model/`` folder: that checkpoint;
    * a run folder (``checkpoints/`` or ``preset.yaml`` inside): its newest complete checkpoint;
    * a folder with ``model/`` but no ``trainer_state.json``: refused (a save that never finished);
    * any other folder: the weights themselves (an adapter or a saved model);
    * not a folder: a run id in the runs database, meaning that run's newest complete checkpoint.
    """
    path = Path(target).expanduser()
    if path.is_dir():
        if (path / STATE_FILE).is_file():
            return _step_folder(path)
        if path.name == "model" and (path.parent / STATE_FILE).is_file():
            return _step_folder(path.parent)
        if (run_dir := _run_folder(path)) is not None:
            return _newest(run_dir, None)
        if (path / "model").is_dir():
            raise MemFactoryError(f"checkpoint folder {target!r} is incomplete (no {STATE_FILE}): its save never "
                                  "finished; name the run folder for its newest complete checkpoint")
        return Checkpoint(path)
    db_path = Path(runs_db)
    if not db_path.is_file():
        raise MemFactoryError(f"checkpoint {target!r} is neither a folder nor a run id: there is no runs database "
                              f"at {db_path} to look it up in")
    db = RunsDB(db_path)
    try:
        record = db.require(target)  # an unknown id: a MemFactoryError with the closest ids
    finally:
        db.close()
    return _newest(Path(record.run_dir), record.id)


# --------------------------------------------------------------------------- memfactory eval's rows


def without_chunk_cap(preset: Preset) -> Preset:
    """The same preset with every module's ``max_chunks`` removed (MemFactory evaluates uncapped)."""
    data = preset.model_dump(mode="json", exclude_none=True)
    changed = False
    for spec in data.get("modules", {}).values():
        if spec.pop("max_chunks", None) is not None:
            changed = True
    return parse_preset(data, f"preset {preset.name!r}") if changed else preset


@dataclass
class EvalRow:
    """One row of the table: a label, the preset to run (checkpoint already set)."""

    label: str
    preset: Preset

    @property
    def checkpoint(self) -> str | None:
        return self.preset.model.checkpoint


def row_label(preset: Preset, target: str, checkpoint: str | None) -> str:
    base = preset.name if is_preset_path(target) else target
    return f"{base} + {checkpoint}" if checkpoint else base


def make_rows(
    targets: Sequence[str],
    checkpoints: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    runs_db: str | None = None,
    keep_chunk_cap: bool = False,
    protocol: Any = None,
) -> list[EvalRow]:
    """Targets x checkpoints -> rows. One ``--checkpoint`` applies to every target; as many as
    targets pair up in order; ``none`` / ``base`` means the base weights. ``protocol`` (a
    ``memfactory.eval.protocols.Protocol``) puts its prompt settings on every preset; ``--set`` fields win."""
    if not targets:
        raise MemFactoryError("name at least one preset (.yaml) or model to evaluate")
    if checkpoints and len(checkpoints) not in (1, len(targets)):
        raise MemFactoryError(
            f"got {len(checkpoints)} --checkpoint values for {len(targets)} models; give one for all, "
            "or one per model in order (use 'none' for the base weights)"
        )
    per_target = (
        list(checkpoints) * len(targets) if len(checkpoints) == 1 else list(checkpoints) or [None] * len(targets)
    )
    rows: list[EvalRow] = []
    seen: dict[str, int] = {}
    for target, ckpt in zip(targets, per_target):
        preset = resolve_target(target, overrides)
        if not keep_chunk_cap:
            preset = without_chunk_cap(preset)
        if protocol is not None:
            preset = protocol.apply(preset, overrides)
        ckpt = None if ckpt is None or ckpt.lower() in BASE_WEIGHTS else ckpt
        if ckpt is not None:
            preset = with_checkpoint(preset, resolve_checkpoint(ckpt, runs_db or preset.logging.runs_db).model_dir)
        label = row_label(preset, target, ckpt)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        rows.append(EvalRow(label, preset))
    return rows
