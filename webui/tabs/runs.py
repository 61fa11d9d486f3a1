"""Runs tab: every run in the runs database, and several runs' reward curves on one chart.

Reads ``<workspace>/runs/memfactory.db`` (memfactory.tracking.runs.RunsDB); a run whose metrics
are not in the database yet is read from its ``metrics.jsonl``. Refreshing also marks runs whose
trainer died as failed (``RunsDB.reconcile``), so nothing spins forever after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from memfactory.errors import MemFactoryError
from memfactory.tracking.metrics import read_metrics
from memfactory.tracking.runs import RunsDB
from webui import plots, runner, workspace
from webui.i18n import t
from webui.tabs import UIContext

ORDER = 50
COLUMNS = ["run", "status", "preset", "steps", "best reward", "last reward", "peak GiB", "duration", "started (UTC)"]


def open_db(path: str | Path | None = None):
    return RunsDB(path or workspace.runs_db())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _reward(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _gib(value: float | None) -> float | None:
    """The run's peak device memory (``RunRecord.peak_gib``, from ``hw/peak_gib``); None before any step."""
    return None if value is None else round(float(value), 2)


def runs_table(db) -> pd.DataFrame:
    """One row per run, newest first (after marking runs with a dead trainer as failed)."""
    db.reconcile()
    rows = []
    for run in db.list_runs():
        steps = f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)
        rows.append([run.id, run.status, run.name, steps, _reward(run.best_reward), _reward(run.last_reward),
                     _gib(run.peak_gib), _duration(run.duration_s), run.iso(run.started_at or run.created_at)])
    return pd.DataFrame(rows, columns=COLUMNS)


def run_metrics(db, run_id: str) -> pd.DataFrame:
    """A run's metrics: from the database, else from its ``metrics.jsonl``."""
    frame = db.metrics_frame(run_id)
    if not frame.empty:
        return frame
    record = db.get(run_id)
    if record is None:
        return pd.DataFrame()
    return pd.DataFrame(read_metrics(Path(record.run_dir) / "metrics.jsonl").records)


def overlay(db, run_ids: list[str]) -> Any:
    return plots.overlay_figure({run_id: run_metrics(db, run_id) for run_id in run_ids or []})


def run_details(db, run_id: str | None) -> tuple[dict[str, Any], str]:
    """One run's figures (reward, distribution, loss, KL, length, clip) and the tail of its log."""
    record = db.get(run_id) if run_id else None
    if record is None:
        return plots.all_figures(None), ""
    figures = plots.all_figures(run_metrics(db, run_id))
    samples = read_metrics(Path(record.run_dir) / "samples.jsonl").records
    figures["distribution"] = plots.reward_distribution_figure(samples)
    log = runner.tail(Path(record.run_dir) / "stdout.log", 40)
    if record.error:
        log = f"{log}\n\n[error] {record.error}".strip()
    return figures, log


def run_preset_file(db, run_id: str | None) -> Path:
    """``runs/<id>/preset.yaml`` of a run, refused unless it lies inside the workspace's runs folder."""
    if not run_id:
        raise MemFactoryError("pick a run first")
    record = db.require(run_id)
    if not record.run_dir:
        raise MemFactoryError(f"run {run_id} has no folder recorded")
    path = workspace.confine(workspace.runs_dir(), Path(record.run_dir) / "preset.yaml")
    if not path.is_file():
        raise MemFactoryError(f"run {run_id} has no preset.yaml in {record.run_dir}")
    return path


def delete_run(db, run_id: str | None, confirmed: bool) -> str:
    """Delete a finished run's row and metrics, and its folder when that lies in the workspace's runs folder.

    Refuses without ``confirmed`` and (RunsDB.delete) while the run's trainer is alive. Returns a
    message saying what was removed; a folder outside the runs folder is never touched.
    """
    if not run_id:
        raise MemFactoryError("pick a run first")
    if not confirmed:
        raise MemFactoryError(f"tick '{t('runs_delete_confirm')}' to delete run {run_id}")
    record = db.require(run_id)
    folder: Path | None = None
    if record.run_dir:
        runs_root = workspace.runs_dir().resolve()
        try:
            candidate = workspace.confine(runs_root, record.run_dir)
        except MemFactoryError:
            candidate = None
        if candidate is not None and candidate.parent == runs_root and candidate.name == run_id:
            folder = candidate
    db.delete(run_id, remove_files=folder is not None)
    if folder is None:
        kept = f"; its folder {record.run_dir} is outside {workspace.runs_dir()} and was left in place" \
            if record.run_dir and Path(record.run_dir).exists() else ""
        return f"deleted run {run_id}{kept}"
    if folder.exists():
        return f"deleted run {run_id} from the database, but its folder {folder} could not be removed"
    return f"deleted run {run_id} and its folder {folder}"


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    with gr.Tab(t("tab.runs"), id="runs", elem_id="mf-tab-runs") as tab:
        labels.add(tab, "tab.runs")
        note = gr.Markdown(elem_id="mf-runs-note")
        with gr.Row():
            selected = gr.Dropdown(choices=[], value=[], multiselect=True, label=t("runs_select"),
                                   elem_id="mf-runs-select", scale=4, allow_custom_value=True)
            labels.add(selected, "runs_select")
            refresh = gr.Button(t("refresh"), elem_id="mf-runs-refresh", scale=1)
            labels.add(refresh, "refresh", "value")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, label=t("runs_table"), elem_id="mf-runs-table")
        labels.add(table, "runs_table")
        chart = gr.Plot(value=plots.empty_figure("Reward by run"), elem_id="mf-runs-overlay", show_label=False)
        # the run dropdowns take any value (allow_custom_value): a run deleted between a refresh and an event
        # must not fail Gradio's choices check; every handler looks the id up in the database anyway
        with gr.Group():
            with gr.Row(equal_height=True):
                manage_run = gr.Dropdown(choices=[], value=None, label=t("runs_manage"), elem_id="mf-run-manage",
                                         scale=3, allow_custom_value=True)
                labels.add(manage_run, "runs_manage")
                open_btn = gr.Button(t("runs_open"), elem_id="mf-run-open", scale=1)
                labels.add(open_btn, "runs_open", "value")
            with gr.Row(equal_height=True):
                confirm = gr.Checkbox(value=False, label=t("runs_delete_confirm"), elem_id="mf-run-delete-confirm",
                                      scale=3)
                labels.add(confirm, "runs_delete_confirm")
                delete_btn = gr.Button(t("runs_delete"), variant="stop", elem_id="mf-run-delete", scale=1)
                labels.add(delete_btn, "runs_delete", "value")
        manage_note = gr.Markdown(elem_id="mf-run-manage-note")
        with gr.Accordion(t("run_details"), open=False) as details:
            labels.add(details, "run_details")
            detail_run = gr.Dropdown(choices=[], value=None, label=t("run_details"), elem_id="mf-run-detail",
                                     allow_custom_value=True)
            labels.add(detail_run, "run_details")
            detail_plots = {}
            for row in (("reward", "distribution"), ("loss", "kl"), ("length", "clip")):
                with gr.Row():
                    for name in row:
                        detail_plots[name] = gr.Plot(show_label=False, elem_id=f"mf-run-plot-{name}")
            log_box = gr.Textbox(label="stdout.log", lines=10, max_lines=20, interactive=False, elem_id="mf-run-log")
        timer = gr.Timer(10.0)

    def on_refresh(current: list[str], detail: str | None, managed: str | None):
        try:
            frame = runs_table(open_db())
        except MemFactoryError as exc:
            return f"⚠️ {exc}", pd.DataFrame(columns=COLUMNS), gr.update(), gr.update(), gr.update()
        ids = frame["run"].tolist()
        keep = [run_id for run_id in current or [] if run_id in ids]
        message = "" if ids else t("runs_empty")
        return (message, frame, gr.update(choices=ids, value=keep),
                gr.update(choices=ids, value=detail if detail in ids else None),
                gr.update(choices=ids, value=managed if managed in ids else None))

    def on_detail(run_id: str | None):
        try:
            figures, log = run_details(open_db(), run_id)
        except MemFactoryError as exc:
            figures, log = plots.all_figures(None), str(exc)
        return [*(figures[name] for name in detail_plots), log]

    def on_select(run_ids: list[str]):
        try:
            return overlay(open_db(), run_ids)
        except MemFactoryError as exc:
            return plots.empty_figure("Reward by run", str(exc))

    outputs = [note, table, selected, detail_run, manage_run]
    inputs = [selected, detail_run, manage_run]
    detail_outputs = [*detail_plots.values(), log_box]
    refresh.click(on_refresh, inputs, outputs).then(on_select, selected, chart).then(
        on_detail, detail_run, detail_outputs)
    timer.tick(on_refresh, inputs, outputs, show_progress="hidden")
    ctx.demo.load(on_refresh, inputs, outputs, show_progress="hidden")

    def on_delete(run_id: str | None, confirmed: bool):
        try:
            message = delete_run(open_db(), run_id, bool(confirmed))
        except MemFactoryError as exc:
            gr.Warning(str(exc).splitlines()[0])
            return f"❌ {exc}", gr.update(), gr.update()
        gr.Info(message)
        return f"🗑️ {message}", False, None

    delete_btn.click(on_delete, [manage_run, confirm], [manage_note, confirm, manage_run]).success(
        on_refresh, inputs, outputs).then(on_select, selected, chart)

    # "open in Assemble": the Assemble tab fills its form from the run's preset.yaml, then is shown
    fill = ctx.shared.get("assemble_load_file")
    form_outputs = ctx.shared.get("assemble_load_outputs")
    tabs = ctx.shared.get("tabs")
    if fill is None or form_outputs is None or tabs is None:
        open_btn.interactive = False
        return

    def on_open(run_id: str | None):
        skip = [gr.skip()] * (len(form_outputs) + 2)
        try:
            path = run_preset_file(open_db(), run_id)
            updates = fill(path)
        except (MemFactoryError, OSError, yaml.YAMLError) as exc:
            gr.Warning(str(exc).splitlines()[0])
            return [f"❌ {exc}", *skip[1:]]
        return [f"📂 {run_id}: `{path}`", gr.Tabs(selected="assemble"), *updates]

    open_btn.click(on_open, manage_run, [manage_note, tabs, *form_outputs])
    selected.change(on_select, selected, chart, show_progress="hidden")
    detail_run.input(on_detail, detail_run, detail_outputs, show_progress="hidden")
