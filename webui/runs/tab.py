"""Runs tab: every run in the runs database, and several runs' reward curves on one chart.

What it shows and does is webui.runs.records'; this file draws and wires. "Open in Assemble" shows a
run's ``preset.yaml`` in the Assemble tab's form, lent through ``ctx.shared.open_in_assemble``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
import yaml

from memfactory.errors import MemFactoryError
from webui import plots, workspace
from webui.i18n import t
from webui.runs.records import COLUMNS, delete_run, overlay, run_details, run_preset_file, runs_table
from webui.state import UIContext, Updates, refreshed_choices

ASSEMBLE_MISSING = "Open in Assemble is off: the Assemble tab failed to load (see its ⚠️ tab)."


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

    def on_refresh(data: dict[Any, Any]) -> Updates:
        try:
            frame = runs_table(workspace.open_runs_db())
        except MemFactoryError as exc:
            return {note: f"⚠️ {exc}", table: pd.DataFrame(columns=COLUMNS)}
        ids = frame["run"].tolist()
        return {note: "" if ids else t("runs_empty"), table: frame,
                selected: refreshed_choices(ids, data[selected] or []),
                detail_run: refreshed_choices(ids, data[detail_run]),
                manage_run: refreshed_choices(ids, data[manage_run])}

    def on_detail(run_id: str | None) -> Updates:
        try:
            figures, log = run_details(workspace.open_runs_db(), run_id)
        except MemFactoryError as exc:
            figures, log = plots.all_figures(None), str(exc)
        return {log_box: log, **{plot: figures[name] for name, plot in detail_plots.items()}}

    def on_select(run_ids: list[str]):
        try:
            return overlay(workspace.open_runs_db(), run_ids)
        except MemFactoryError as exc:
            return plots.empty_figure("Reward by run", str(exc))

    outputs = [note, table, selected, detail_run, manage_run]
    inputs = {selected, detail_run, manage_run}
    detail_outputs = [*detail_plots.values(), log_box]
    refresh.click(on_refresh, inputs, outputs).then(on_select, selected, chart).then(
        on_detail, detail_run, detail_outputs)
    timer.tick(on_refresh, inputs, outputs, show_progress="hidden")
    ctx.demo.load(on_refresh, inputs, outputs, show_progress="hidden")
    selected.change(on_select, selected, chart, show_progress="hidden")
    detail_run.input(on_detail, detail_run, detail_outputs, show_progress="hidden")

    def on_delete(run_id: str | None, confirmed: bool) -> Updates:
        try:
            message = delete_run(workspace.open_runs_db(), run_id, bool(confirmed))
        except MemFactoryError as exc:
            gr.Warning(str(exc).splitlines()[0])
            return {manage_note: f"❌ {exc}"}
        gr.Info(message)
        return {manage_note: f"🗑️ {message}", confirm: False, manage_run: None}

    delete_btn.click(on_delete, [manage_run, confirm], [manage_note, confirm, manage_run]).success(
        on_refresh, inputs, outputs).then(on_select, selected, chart)

    # "open in Assemble": the Assemble tab (built before this one, see webui.app.TABS) fills its form from the
    # run's preset.yaml, then is shown; when it failed to build, the button is off and says why
    assemble = ctx.shared.open_in_assemble
    if assemble is None:
        open_btn.interactive = False
        manage_note.value = ASSEMBLE_MISSING
        return

    def on_open(run_id: str | None) -> Updates:
        try:
            path = run_preset_file(workspace.open_runs_db(), run_id)
            updates = assemble.fill(path)
        except (MemFactoryError, OSError, yaml.YAMLError) as exc:
            gr.Warning(str(exc).splitlines()[0])
            return {manage_note: f"❌ {exc}"}
        return {manage_note: f"📂 {run_id}: `{path}`", ctx.shared.tabs: gr.Tabs(selected="assemble"), **updates}

    open_btn.click(on_open, manage_run, [manage_note, ctx.shared.tabs, *assemble.outputs])
