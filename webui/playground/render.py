"""Showing a Playground comparison (no Gradio): frames, HTML for one sample and its memory traces, exports.

The comparison is plain data: a summary frame (avg score per workflow), a per-sample frame with
one row per sample and workflow and a ``disagree`` flag, HTML for the side-by-side sample view and
the memory-trace viewer, and CSV/JSON exports.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from memfactory.envs.answer_metrics import normalize_answer
from memfactory.eval.scoring import SampleResult
from webui.playground.compare import RunSettings, WorkflowResult

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


def export_folder(keep: int = 50) -> Path:
    """A fresh folder for one run's downloads; only the newest ``keep`` such folders are kept."""
    root = Path(tempfile.gettempdir()) / "memfactory-ui"
    try:
        old = sorted(root.glob("playground-*"), key=lambda p: p.stat().st_mtime)
    except OSError:
        old = []
    for folder in old[:-keep] if len(old) > keep else []:
        shutil.rmtree(folder, ignore_errors=True)
    return root / f"playground-{uuid.uuid4().hex[:12]}"
