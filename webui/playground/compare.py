"""The Playground's runs (no Gradio): build 2-4 workflows and run them on one eval set.

A *workflow* is a preset, optionally with a trained checkpoint, or an OpenAI-compatible endpoint
(base URL + served model name + the name of the environment variable holding its key). Each one
runs through :func:`memfactory.eval.workflow.evaluate_workflow`; a workflow that cannot be built or
fails while running keeps its error message and the others still run. Backends are cached by
what they load (``webui.models.BackendCache``, shared with the Chat tab's), so two workflows on the
same model (say, "direct" and "memagent" on SmolLM2) share one loaded model. Showing the results is webui.playground.render's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfactory.config import Preset, load_preset
from memfactory.data import sources
from memfactory.errors import MemFactoryError
from memfactory.eval.run import load_sets
from memfactory.eval.scoring import SampleResult
from memfactory.eval.workflow import evaluate_workflow
from memfactory.targets import Endpoint, workflow_preset
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.layout import latest_checkpoint
from memfactory.types import SamplingParams
from webui import workspace
from webui.models import BackendCache, backend_key

log = logging.getLogger(__name__)

MAX_WORKFLOWS = 4
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SET = "eval_docqa"
# Default workflows: the same small model with and without memory, so a newcomer offline sees the
# difference memory makes with real answers.
DEFAULT_WORKFLOWS = (("direct (no memory)", "tiny_cpu_demo"), ("memagent", "memagent_smollm2_cpu"))
# A playground run should fail fast on a dead endpoint (the backend's own defaults retry 4 times).
ENDPOINT_OPTIONS = {"max_retries": 1, "timeout": 120.0}

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------- what to run


@dataclass
class WorkflowSpec:
    """One column of the comparison, as typed in the UI."""

    label: str = ""
    preset: str = ""  # a preset name in the workspace (or a shipped one)
    checkpoint: str = ""  # a run id or a checkpoint / run folder ("" = base weights)
    base_url: str = ""  # set -> an OpenAI-compatible endpoint instead of a local model
    model: str = ""  # served model name (endpoint) or local model path override
    api_key_env: str = "OPENAI_API_KEY"

    @property
    def is_endpoint(self) -> bool:
        return bool(self.base_url.strip())

    def title(self) -> str:
        if self.label.strip():
            return self.label.strip()
        if self.is_endpoint:
            base = f"{self.preset or 'direct'} @ {self.model or '?'}"
        else:
            base = self.preset or "?"
        return f"{base} + {self.checkpoint}" if self.checkpoint.strip() else base


@dataclass
class RunSettings:
    """What every workflow shares: the set, how many samples, decoding."""

    eval_set: str = DEFAULT_SET
    n: int = 4
    temperature: float = 0.0  # greedy by default: comparisons should not depend on luck
    max_new_tokens: int | None = None  # None = each preset's own trainer.max_new_tokens
    model_override: str = ""  # a model path for every local workflow (e.g. tiny://qwen3-mini)
    data_dir: str | None = None  # where downloaded eval sets live (default <workspace>/data)
    batch_size: int = 4


@dataclass
class WorkflowResult:
    label: str
    spec: WorkflowSpec
    samples: list[SampleResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    model: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def default_data_dir() -> Path:
    return workspace.workspace_root() / "data"


def eval_set_choices(data_dir: str | Path | None = None) -> list[str]:
    """Eval sets visible from the data folder (MemAgent's, when downloaded) and the shipped demo sets."""
    folder = data_dir if data_dir is not None else default_data_dir()
    # LoCoMo-format sets (for memory-bank agents: Memory-R1, RMM) are listed beside them
    names = {name for family in sources.FAMILIES for name in sources.list_sets(family, folder)}
    return sorted(names, key=lambda n: (n != DEFAULT_SET, n))


def checkpoint_choices(runs_db: str | Path | None = None) -> list[str]:
    """Run ids that have at least one complete checkpoint (newest first)."""
    path = Path(runs_db or workspace.runs_db())
    if not path.is_file():
        return []
    db = RunsDB(path)
    try:
        return [r.id for r in db.list_runs() if latest_checkpoint(Path(r.run_dir)) is not None]
    except (MemFactoryError, OSError):
        return []
    finally:
        db.close()


def build_preset(spec: WorkflowSpec, settings: RunSettings) -> Preset:
    """The preset a workflow runs: its file, with the endpoint / model / checkpoint the form asks for
    (the rules are :func:`memfactory.targets.workflow_preset`'s)."""
    name = spec.preset.strip()
    endpoint = None
    if spec.is_endpoint:
        endpoint = Endpoint(spec.base_url.strip(), spec.model.strip(), spec.api_key_env.strip(), ENDPOINT_OPTIONS)
    elif not name:
        raise MemFactoryError("choose a preset (or give an endpoint's base URL)")
    preset = load_preset(workspace.find_preset(name)) if name else None
    return workflow_preset(preset, endpoint=endpoint, model=spec.model.strip() or settings.model_override.strip(),
                           checkpoint=spec.checkpoint.strip(), runs_db=workspace.runs_db())


def sampling_params(preset: Any, settings: RunSettings) -> SamplingParams:
    trainer = preset.trainer
    return SamplingParams(
        max_new_tokens=int(settings.max_new_tokens or trainer.max_new_tokens),
        temperature=float(settings.temperature),
        top_p=trainer.top_p,
        stop=list(trainer.stop),
    )


# --------------------------------------------------------------------------- running


def describe_error(exc: BaseException) -> str:
    """One readable paragraph for the UI (never a traceback)."""
    if isinstance(exc, MemFactoryError):
        return str(exc).strip()
    if isinstance(exc, (OSError, ValueError, KeyError, RuntimeError)):
        return f"{type(exc).__name__}: {exc}".strip()
    return f"unexpected {type(exc).__name__}: {exc}".strip()


def unique_labels(specs: Sequence[WorkflowSpec]) -> list[str]:
    labels, seen = [], {}
    for spec in specs:
        label = spec.title()
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def run_comparison(
    specs: Sequence[WorkflowSpec],
    settings: RunSettings,
    *,
    cache: BackendCache | None = None,
    progress: Progress | None = None,
) -> list[WorkflowResult]:
    """Run every workflow on the first ``settings.n`` samples of ``settings.eval_set``, one after another.

    A workflow that fails (bad preset, missing checkpoint, dead endpoint, ...) gets its ``error``
    and an empty sample list; the others are unaffected. ``progress(fraction, text)`` follows along.
    """
    specs = list(specs)
    if not specs:
        raise MemFactoryError("add at least one workflow")
    if len(specs) > MAX_WORKFLOWS:
        raise MemFactoryError(f"compare at most {MAX_WORKFLOWS} workflows, got {len(specs)}")
    if settings.n < 1:
        raise MemFactoryError(f"number of samples must be >= 1, got {settings.n}")
    if settings.temperature < 0:
        raise MemFactoryError(f"temperature must be >= 0, got {settings.temperature}")
    cache = cache if cache is not None else BackendCache()
    data_dir = settings.data_dir if settings.data_dir is not None else str(default_data_dir())
    results = [WorkflowResult(label=label, spec=spec) for spec, label in zip(specs, unique_labels(specs))]
    total = len(specs)

    def report(i: int, fraction: float, text: str) -> None:
        if progress is not None:
            progress(min(1.0, (i + fraction) / total), text)

    # 1. every workflow's preset and samples, before any model loads (cheap errors first)
    prepared: dict[int, tuple[Any, list[Any]]] = {}
    for i, result in enumerate(results):
        try:
            preset = build_preset(result.spec, settings)
            result.model = preset.model.path + (f" + {preset.model.checkpoint}" if preset.model.checkpoint else "")
            samples = load_sets(preset, [settings.eval_set], data_dir=data_dir, n=settings.n)[settings.eval_set]
            prepared[i] = (preset, samples)
        except Exception as exc:  # noqa: BLE001 - shown for this workflow, the rest still run
            _fail(result, exc)
    # models no workflow of this run needs are let go before new ones load
    cache.keep_only([backend_key(preset.model) for preset, _ in prepared.values()])

    # 2. run them one after another (one model in use at a time; same-model workflows share it)
    for i, result in enumerate(results):
        if i not in prepared:
            continue
        preset, samples = prepared[i]
        began = time.perf_counter()
        try:
            report(i, 0.0, f"{result.label}: loading {preset.model.path}")
            backend = cache.get(preset.model)
            if result.spec.is_endpoint and hasattr(backend, "list_models"):
                backend.list_models()  # a dead endpoint fails here, before any sample

            def step(done: int, count: int, _finished: list[SampleResult], _i: int = i, _label: str = result.label) -> None:
                report(_i, done / max(count, 1), f"{_label}: {done}/{count} samples")

            result.samples = evaluate_workflow(
                preset, samples, k=1, params=sampling_params(preset, settings), backend=backend,
                batch_size=settings.batch_size, on_progress=step,
            )
        except Exception as exc:  # noqa: BLE001 - one workflow's failure is shown, the rest still run
            result.samples = []
            _fail(result, exc)
        result.seconds = time.perf_counter() - began
        report(i, 1.0, f"{result.label}: {'failed' if result.error else 'done'}")
    if progress is not None:
        progress(1.0, "done")
    return results


def _fail(result: WorkflowResult, exc: BaseException) -> None:
    log.warning("playground workflow %r failed: %s", result.label, exc, exc_info=not isinstance(exc, MemFactoryError))
    result.error = describe_error(exc)
