"""The Playground's logic (no Gradio): build 2-4 workflows, run them on one eval set, compare.

A *workflow* is a preset, optionally with a trained checkpoint, or an OpenAI-compatible endpoint
(base URL + served model name + the name of the environment variable holding its key). Each one
runs through :func:`memfactory.evaluate.evaluate_workflow`; a workflow that cannot be built or
fails while running keeps its error message and the others still run. Backends are cached by
what they load, so two workflows on the same model (say, "direct" and "memagent" on SmolLM2)
share one loaded model.

The comparison is plain data: a summary frame (avg score per workflow), a per-sample frame with
one row per sample and workflow and a ``disagree`` flag, HTML for the side-by-side sample view and
the memory-trace viewer, and CSV/JSON exports.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from memfactory.errors import MemFactoryError
from memfactory.evaluate import SampleResult, evaluate_workflow, load_sets, resolve_checkpoint
from memfactory.types import SamplingParams
from webui import workspace

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
    from memfactory.data.memagent import eval_search_dirs, list_eval_sets

    folder = data_dir if data_dir is not None else default_data_dir()
    names = set(list_eval_sets(folder))
    # LoCoMo-format sets (for memory-bank agents: Memory-R1, RMM) sit beside them
    for path in eval_search_dirs(folder):
        if path.is_dir():
            names |= {p.stem for p in path.glob("locomo*.json")}
    return sorted(names, key=lambda n: (n != DEFAULT_SET, n))


def checkpoint_choices(runs_db: str | Path | None = None) -> list[str]:
    """Run ids that have at least one complete checkpoint (newest first)."""
    from memfactory.tracking.runs import RunsDB
    from memfactory.trainer.checkpoint import latest_checkpoint

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


def build_preset(spec: WorkflowSpec, settings: RunSettings) -> Any:
    """The preset a workflow runs: its file, with the checkpoint / endpoint / model override applied."""
    from memfactory.config import load_preset

    if not spec.preset.strip() and not spec.is_endpoint:
        raise MemFactoryError("choose a preset (or give an endpoint's base URL)")
    if spec.preset.strip():
        preset = load_preset(workspace.find_preset(spec.preset.strip()))
    else:  # a bare endpoint: answer directly from the whole context
        from memfactory.config import parse_preset

        preset = parse_preset({"name": "direct", "agent": "direct", "env": {"type": "long_context"},
                               "logging": {"swanlab": "disabled"}}, "endpoint workflow")
    model = preset.model
    if spec.is_endpoint:
        if not spec.model.strip():
            raise MemFactoryError(f"endpoint {spec.base_url.strip()}: give the served model name")
        if spec.checkpoint.strip():
            raise MemFactoryError("a checkpoint applies to a local model, not to an endpoint")
        model = model.model_copy(update={
            "backend": "openai", "base_url": spec.base_url.strip(), "path": spec.model.strip(),
            "api_key_env": spec.api_key_env.strip() or "OPENAI_API_KEY", "options": dict(ENDPOINT_OPTIONS),
            "checkpoint": None,
        })
    else:
        path = spec.model.strip() or settings.model_override.strip()
        if path:
            # another base model: the preset's own checkpoint (trained on its model) no longer applies
            local = model.backend if model.backend in ("hf", "vllm") else "hf"  # a local engine stays what it was
            options = dict(model.options) if model.backend == local else {}
            model = model.model_copy(update={"backend": local, "path": path, "base_url": None, "options": options,
                                             "checkpoint": None})
        if spec.checkpoint.strip():
            try:
                folder = resolve_checkpoint(spec.checkpoint.strip(), workspace.runs_db())
            except MemFactoryError as exc:  # its message names the CLI flag; the UI has a field
                raise MemFactoryError(str(exc).replace("--checkpoint ", "checkpoint ", 1)) from None
            model = model.model_copy(update={"checkpoint": folder})
    return preset.model_copy(update={"model": model})


def sampling_params(preset: Any, settings: RunSettings) -> SamplingParams:
    trainer = preset.trainer
    return SamplingParams(
        max_new_tokens=int(settings.max_new_tokens or trainer.max_new_tokens),
        temperature=float(settings.temperature),
        top_p=trainer.top_p,
        stop=list(trainer.stop),
    )


# --------------------------------------------------------------------------- backends, loaded once


def backend_key(model: Any) -> tuple:
    """What a loaded backend depends on: two workflows with the same key share one model."""
    return (model.backend, model.path, model.checkpoint or None, model.base_url or None, model.dtype,
            model.enable_thinking, model.seed)


class BackendCache:
    """Backends by :func:`backend_key`; the oldest is dropped past ``max_items`` (None = no limit)."""

    def __init__(self, max_items: int | None = None, factory: Callable[[Any], Any] | None = None) -> None:
        self.max_items = max_items
        self._factory = factory
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0

    def get(self, model: Any) -> Any:
        key = backend_key(model)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if model.backend == "vllm":  # vLLM runs one in-process engine at a time: free the other first
            self.keep_only([k for k in self._items if k[0] != "vllm"])
        if self._factory is not None:
            backend = self._factory(model)
        else:
            from memfactory.backends.build import build_backend

            backend = build_backend(model)
        self.loads += 1
        self._items[key] = backend
        while self.max_items is not None and len(self._items) > self.max_items:
            _, old = self._items.popitem(last=False)
            _close(old)
        return backend

    def __len__(self) -> int:
        return len(self._items)

    def keep_only(self, keys: Sequence[tuple]) -> None:
        """Drop (and close) every backend whose key is not in ``keys``."""
        wanted = set(keys)
        for key in [k for k in self._items if k not in wanted]:
            _close(self._items.pop(key))

    def clear(self) -> None:
        while self._items:
            _close(self._items.popitem()[1])


def _close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # closing a client must not fail a run
            log.debug("closing %r failed", backend, exc_info=True)


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


# --------------------------------------------------------------------------- comparing


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


SUMMARY_COLUMNS = ["workflow", "model", "status", "samples", "avg score", "avg latency (s)", "avg tokens",
                   "total tokens"]


def summary_frame(results: Sequence[WorkflowResult]) -> pd.DataFrame:
    """One row per workflow: avg score (mean of per-sample scores), latency and generated tokens."""
    rows = []
    for r in results:
        scores = [s.score for s in r.samples]
        tokens = [sum(s.tokens) for s in r.samples]
        latency = _mean([s.latency_s for s in r.samples])
        rows.append({
            "workflow": r.label,
            "model": r.model,
            "status": "ok" if r.ok else _short(f"error: {r.error.splitlines()[0] if r.error else ''}"),
            "samples": len(r.samples),
            "avg score": None if not scores else round(_mean(scores), 4),
            "avg latency (s)": None if latency is None else round(latency, 3),
            "avg tokens": None if not tokens else round(_mean(tokens), 1),
            "total tokens": sum(tokens),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _normalized(result: SampleResult) -> str:
    from memfactory.envs.rewards import normalize_answer

    prediction = result.predictions[0] if result.predictions and result.predictions[0] is not None else None
    return normalize_answer(prediction if prediction is not None else (result.answers[0] if result.answers else ""))


def sample_ids(results: Sequence[WorkflowResult]) -> list[str]:
    """Sample ids in first-seen order over all workflows."""
    ids: list[str] = []
    for r in results:
        for s in r.samples:
            if s.sample_id not in ids:
                ids.append(s.sample_id)
    return ids


def disagreements(results: Sequence[WorkflowResult]) -> dict[str, bool]:
    """Per sample: do the workflows that answered it disagree (different score or normalised answer)?

    A sample only one workflow answered cannot disagree.
    """
    out = {}
    for sid in sample_ids(results):
        answered = [s for r in results for s in r.samples if s.sample_id == sid]
        scores = {round(s.score, 6) for s in answered}
        answers = {_normalized(s) for s in answered}
        out[sid] = len(answered) > 1 and (len(scores) > 1 or len(answers) > 1)
    return out


def _by_id(result: WorkflowResult) -> dict[str, SampleResult]:
    return {s.sample_id: s for s in result.samples}


COMPARISON_COLUMNS = ["sample", "workflow", "answer", "score", "gold", "disagree", "latency (s)", "tokens",
                      "question"]
# The per-sample table's column widths (Gradio's ``column_widths``), in COMPARISON_COLUMNS order: the
# answer and question get the room, the numbers a fixed few characters, so no header or cell is
# squeezed to one character a line (the old one-column-group-per-workflow layout was, at 4 workflows).
# 660 px + 44 %: the whole table fits a 1200 px wide page; narrower pages scroll it sideways.
COMPARISON_WIDTHS = ["110px", "140px", "26%", "70px", "100px", "80px", "90px", "70px", "18%"]


def comparison_frame(results: Sequence[WorkflowResult], *, answer_chars: int = 300,
                     question_chars: int = 200) -> pd.DataFrame:
    """One row per sample and workflow (samples in order, workflows in order within each sample).

    Long, not wide: the table has the same nine columns for 2 or 4 workflows, so it stays readable;
    every row repeats its sample's question and gold, so sorting by any column keeps rows whole. A
    workflow without an answer for a sample (it failed, or stopped early) gets a row saying so.
    """
    flags = disagreements(results)
    maps = [_by_id(r) for r in results]
    rows = []
    for sid in sample_ids(results):
        first = next(m[sid] for m in maps if sid in m)
        question = _short(first.question, question_chars) if question_chars else first.question
        for r, m in zip(results, maps):
            s = m.get(sid)
            if s is None:
                answer = f"(failed: {(r.error or '').splitlines()[0]})" if r.error else "(not answered)"
            else:
                answer = s.answers[0] if s.answers else ""
            rows.append({
                "sample": sid, "workflow": r.label,
                "answer": _short(answer, answer_chars) if answer_chars else answer,
                "score": None if s is None else round(s.score, 4),
                "gold": " | ".join(first.gold), "disagree": "⚠️" if flags[sid] else "",
                "latency (s)": None if s is None else round(s.latency_s, 3),
                "tokens": None if s is None else sum(s.tokens), "question": question,
            })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


DISAGREE_STYLE = "background-color: #fff3cd"


def styled_comparison(results: Sequence[WorkflowResult]) -> Any:
    """The comparison frame with disagreeing samples' rows highlighted (a pandas Styler)."""
    frame = comparison_frame(results)
    marks = frame["disagree"].astype(bool).tolist() if not frame.empty else []
    styler = frame.style.apply(lambda row: [DISAGREE_STYLE if marks[row.name] else "" for _ in row], axis=1)
    return styler.format(precision=3, na_rep="-")


# --------------------------------------------------------------------------- per-sample view and traces


def _esc(value: Any) -> str:
    return html.escape(str(value if value is not None else ""))


def trace_rows(trace: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(step label, text) per trace entry: MemAgent chunks, memory-bank operations, answers, others."""
    rows = []
    for i, entry in enumerate(trace):
        kind = entry.get("kind")
        if "op" in entry:
            op, ident = entry.get("op"), entry.get("id")
            old, new = entry.get("old"), entry.get("new")
            text = " → ".join(x for x in (f"old: {old}" if old else "", f"new: {new}" if new else "") if x)
            if entry.get("applied") is False:
                text += " (not applied)"
            rows.append((f"{op} {ident or ''}".strip(), text or "-"))
        elif "memory" in entry and "chunk" in entry:
            rows.append((f"chunk {entry['chunk']}", str(entry.get("memory") or "(empty)")
                         + (" (kept previous)" if entry.get("kept_previous") else "")))
        elif "answer" in entry:
            rows.append(("answer", str(entry["answer"])))
        elif kind == "extract":
            facts = [str(f.get("value") or f.get("text") or f) for f in entry.get("facts") or []]
            where = f"extract (session {entry['session']})" if "session" in entry else "extract"
            rows.append((where, "; ".join(facts) or "(no facts)"))
        elif kind == "retrieved":
            memories = entry.get("memories") or []
            shown = "; ".join(str(m.get("text") or m.get("id")) if isinstance(m, dict) else str(m) for m in memories[:5])
            rows.append((f"retrieved ({len(memories)})", f"query: {entry.get('query', '')} → {shown or '(none)'}"))
        elif kind == "bank":
            memories = entry.get("memories") or []
            shown = "; ".join(f"[{m.get('id')}] {m.get('text')}" for m in memories[:10])
            rows.append((f"bank ({entry.get('count', len(memories))})", shown or "(empty)"))
        else:
            label = str(kind or entry.get("step", i))
            rest = {k: v for k, v in entry.items() if k not in ("kind",)}
            rows.append((label, json.dumps(rest, ensure_ascii=False, default=str)[:500]))
    return rows


def trace_html(trace: Sequence[dict[str, Any]]) -> str:
    rows = trace_rows(trace)
    if not rows:
        return "<div class='mf-pg-trace-empty'>(no memory trace)</div>"
    # fixed layout and wrapping anywhere: a long memory or an unbroken token string stays inside its
    # workflow's column instead of overlapping the next one
    cell = "vertical-align:top;overflow-wrap:anywhere;white-space:pre-wrap"
    body = "".join(f"<tr><td style='{cell}'><b>{_esc(step)}</b></td><td style='{cell}'>{_esc(text)}</td></tr>"
                   for step, text in rows)
    return ("<table class='mf-pg-trace' style='width:100%;table-layout:fixed'>"
            "<colgroup><col style='width:7em'><col></colgroup>"
            f"<tr><th>step</th><th>memory</th></tr>{body}</table>")


def sample_html(results: Sequence[WorkflowResult], sample_id: str | None) -> str:
    """The side-by-side view of one sample: one column per workflow, with its memory trace."""
    ids = sample_ids(results)
    if not ids:
        return "<div id='mf-pg-sample-view'>Run a comparison to see samples here.</div>"
    sid = sample_id if sample_id in ids else ids[0]
    flags = disagreements(results)
    first = next(s for r in results for s in r.samples if s.sample_id == sid)
    head = (f"<div class='mf-pg-head'><b>{_esc(sid)}</b>"
            f"{' — <span class=mf-pg-disagree>⚠️ workflows disagree</span>' if flags.get(sid) else ''}"
            f"<br><b>Q:</b> {_esc(first.question)}<br><b>gold:</b> {_esc(' | '.join(first.gold))}</div>")
    columns = []
    for r in results:
        s = _by_id(r).get(sid)
        if s is None:
            inner = f"<div style='overflow-wrap:anywhere'><i>{_esc(r.error or 'not answered')}</i></div>"
        else:
            answer = s.answers[0] if s.answers else ""
            trace = s.traces[0] if s.traces else []
            inner = (f"<div><b>score</b> {s.score:.3f} · <b>latency</b> {s.latency_s:.2f}s · "
                     f"<b>tokens</b> {sum(s.tokens)}</div>"
                     f"<pre class='mf-pg-answer' style='white-space:pre-wrap;overflow-wrap:anywhere'>{_esc(answer)}</pre>"
                     f"<details open><summary>memory trace ({len(trace)} steps)</summary>{trace_html(trace)}</details>")
        columns.append(f"<div class='mf-pg-col' style='flex:1;min-width:0;border:1px solid #ddd;"
                       f"border-radius:6px;padding:8px'><h4>{_esc(r.label)}</h4>{inner}</div>")
    return (f"<div id='mf-pg-sample-view'>{head}"
            f"<div style='display:flex;gap:12px;margin-top:8px'>{''.join(columns)}</div></div>")


def sample_choices(results: Sequence[WorkflowResult]) -> list[tuple[str, str]]:
    """Dropdown choices (label, id), disagreeing samples marked."""
    flags = disagreements(results)
    return [(("⚠️ " if flags[sid] else "") + sid, sid) for sid in sample_ids(results)]


def errors_markdown(results: Sequence[WorkflowResult]) -> str:
    failed = [r for r in results if not r.ok]
    if not failed:
        return ""
    return "\n".join(f"❌ **{r.label}** failed: {r.error}" for r in failed)


# --------------------------------------------------------------------------- exports


def long_frame(results: Sequence[WorkflowResult]) -> pd.DataFrame:
    """One row per (workflow, sample): the CSV export."""
    flags = disagreements(results)
    rows = []
    for r in results:
        for s in r.samples:
            rows.append({
                "workflow": r.label, "model": r.model, "sample": s.sample_id, "question": s.question,
                "gold": " | ".join(s.gold), "answer": s.answers[0] if s.answers else "",
                "prediction": s.predictions[0] if s.predictions else None, "metric": s.metric,
                "score": s.score, "latency_s": s.latency_s, "tokens": sum(s.tokens),
                "prompt_tokens": sum(s.prompt_tokens), "calls": sum(s.calls), "disagree": flags[s.sample_id],
            })
        if not r.ok:
            rows.append({"workflow": r.label, "model": r.model, "sample": None, "answer": f"error: {r.error}"})
    columns = ["workflow", "model", "sample", "question", "gold", "answer", "prediction", "metric", "score",
               "latency_s", "tokens", "prompt_tokens", "calls", "disagree"]
    return pd.DataFrame(rows, columns=columns)


def to_json(results: Sequence[WorkflowResult], settings: RunSettings) -> dict[str, Any]:
    summary = summary_frame(results).astype(object).where(lambda f: f.notna(), None)
    return {
        "settings": asdict(settings),
        "summary": summary.to_dict(orient="records"),
        "disagree": disagreements(results),
        "workflows": [
            {"label": r.label, "spec": asdict(r.spec), "model": r.model, "error": r.error,
             "seconds": r.seconds, "samples": [s.to_dict() for s in r.samples]}
            for r in results
        ],
    }


def export_files(results: Sequence[WorkflowResult], settings: RunSettings, folder: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` (one row per workflow x sample) and ``comparison.json`` (everything)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "comparison.csv", folder / "comparison.json"
    long_frame(results).to_csv(csv_path, index=False)
    json_path.write_text(json.dumps(to_json(results, settings), ensure_ascii=False, indent=2, default=str) + "\n",
                         encoding="utf-8")
    return csv_path, json_path
