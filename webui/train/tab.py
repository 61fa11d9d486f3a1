"""Train tab: start, watch, abort and resume ``memfactory train`` runs.

The run is a separate process group (webui.train.launcher), so closing the browser or restarting
the UI does not stop it; on load the tab follows the newest running run from the runs database. A
``gr.Timer`` polls the run (webui.train.view.poll) and redraws the curves only when metrics.jsonl
or samples.jsonl changed (read through memfactory.tracking.metrics.read_records), and drops a poll
whose run the session has left meanwhile (webui.train.view.FollowedRuns). The logic lives
in webui.train's other modules; this file draws, wires, and keys every update by its component.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from memfactory.errors import MemFactoryError
from memfactory.tracking import process, runs
from memfactory.tracking.metrics import RunDir, read_records
from webui import plots, workspace
from webui.i18n import t
from webui.state import UIContext, Updates, button_on, refreshed_choices, run_while_off
from webui.train import actions, command, samples, view
from webui.train.view import Attached

TICK_S = 2.0
PLOTS = (("reward", "distribution"), ("loss", "kl"), ("length", "clip"), ("hardware",))
OVERRIDE_LABELS = {"steps": "steps", "lr": "learning rate", "group_size": "group size", "batch_size": "batch size",
                   "save_every": "save every (steps)", "sample_every": "samples every (steps)"}
log = logging.getLogger(__name__)


def _labels(lang: str | None) -> dict[str, str]:
    lang = lang or "en"
    out = {status: t(f"status.{status}", lang) for status in runs.STATUSES}
    out.update(none=t("train_none", lang), step=t("train_step", lang), elapsed=t("train_elapsed", lang),
               eta=t("train_eta", lang))
    return out


def _message(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    presets = workspace.list_presets()
    with gr.Tab(t("tab.train"), id="train", elem_id="mf-tab-train") as tab:
        labels.add(tab, "tab.train")
        with gr.Row(equal_height=True):
            preset = gr.Dropdown(choices=presets, value=view.default_preset(presets), label=t("train_preset"),
                                 elem_id="mf-train-preset", scale=3)
            labels.add(preset, "train_preset")
            # actions wait for the page load to pick the run to follow (else that pick could replace a new start)
            start_btn = gr.Button(t("train_start"), variant="primary", elem_id="mf-train-start", scale=1,
                                  interactive=False)
            labels.add(start_btn, "train_start", "value")
            abort_btn = gr.Button(t("train_abort"), variant="stop", elem_id="mf-train-abort", scale=1,
                                  interactive=False)
            labels.add(abort_btn, "train_abort", "value")
            resume_btn = gr.Button(t("train_resume"), elem_id="mf-train-resume", scale=1, interactive=False)
            labels.add(resume_btn, "train_resume", "value")
        with gr.Row(equal_height=True):
            run_pick = gr.Dropdown(choices=[], value=None, label=t("train_run"), elem_id="mf-train-run", scale=4)
            labels.add(run_pick, "train_run")
            refresh_btn = gr.Button(t("refresh"), elem_id="mf-train-refresh", scale=1)
            labels.add(refresh_btn, "refresh", "value")
        hardware = command.detect_hardware()
        with gr.Accordion("Devices, launch options and command", open=True, elem_id="mf-train-launch-acc"):
            hw_md = gr.Markdown(command.hardware_markdown(hardware), elem_id="mf-train-hardware")
            with gr.Row(equal_height=True):
                devices = gr.Textbox(label="GPUs (CUDA_VISIBLE_DEVICES; empty = all)", placeholder="e.g. 0,1",
                                     elem_id="mf-train-devices", scale=2)
                nproc = gr.Number(value=1, precision=0, minimum=1, label="processes", elem_id="mf-train-nproc",
                                  scale=1)
                strategy = gr.Dropdown(choices=[(label, key) for key, label in command.STRATEGY_LABELS.items()],
                                       value="single", label="strategy", elem_id="mf-train-strategy", scale=2)
                precision = gr.Dropdown(choices=[("from the preset", ""), *[(p, p) for p in command.PRECISIONS]],
                                        value="", label="precision (trainer.precision)", elem_id="mf-train-precision",
                                        scale=2)
            with gr.Row(equal_height=True):
                # text boxes, not gr.Number: an empty box must mean "the preset's value" (a Number sends 0)
                override_boxes = {name: gr.Textbox(label=label, elem_id=f"mf-train-set-{name}",
                                                   placeholder="from the preset", max_lines=1)
                                  for name, label in OVERRIDE_LABELS.items()}
            checks_md = gr.Markdown(elem_id="mf-train-checks")
            force = gr.Checkbox(False, label="launch anyway (ignore the memory planner)", elem_id="mf-train-force")
            command_box = gr.Code(language="shell", label="command (what Start runs; copy it to a terminal)",
                                  interactive=False, wrap_lines=True, elem_id="mf-train-command")
        status = gr.Markdown(t("train_none"), elem_id="mf-train-status")
        progress = gr.HTML(elem_id="mf-train-progress")
        figures: dict[str, Any] = {}
        for row in PLOTS:
            with gr.Row():
                for name in row:
                    figures[name] = gr.Plot(show_label=False, elem_id=f"mf-train-plot-{name}")
        with gr.Accordion(t("train_samples"), open=True, elem_id="mf-train-samples-acc") as samples_acc:
            labels.add(samples_acc, "train_samples")
            with gr.Row():
                sample_step = gr.Dropdown(choices=[("latest", "latest")], value="latest", label=t("train_sample_step"),
                                          elem_id="mf-train-sample-step", scale=1)
                labels.add(sample_step, "train_sample_step")
                sample_index = gr.Slider(1, 8, value=1, step=1, label=t("train_sample_index"),
                                         elem_id="mf-train-sample-index", scale=2)
                labels.add(sample_index, "train_sample_index")
            sample_md = gr.Markdown(elem_id="mf-train-sample")
        log_box = gr.Textbox(label=t("train_log"), lines=10, max_lines=view.LOG_LINES, interactive=False, autoscroll=True,
                             elem_id="mf-train-log")
        labels.add(log_box, "train_log")
        timer = gr.Timer(TICK_S)

    attached = gr.State({})
    pending = gr.State({})  # the run id and rendezvous port the preview shows, used by the next Start
    seen = gr.State({})  # what the figures last showed: run id and the metrics/samples file signatures
    lang = ctx.lang if ctx.lang is not None else gr.State("en")
    followed = view.FollowedRuns()  # what each session follows now, to drop a poll made for a run it left

    def follow(request: gr.Request | None, att: Attached) -> dict[str, Any]:
        followed.follow(getattr(request, "session_hash", None), att.run_id)
        return att.to_dict()

    plot_list = [figures[name] for row in PLOTS for name in row]

    # ---------------------------------------------------------------- refresh (timer, load, actions)

    def refresh(data: dict[Any, Any], request: gr.Request) -> Updates:
        att, last = Attached.of(data[attached]), data[seen] or {}
        session = getattr(request, "session_hash", None)
        if not followed.is_current(session, att.run_id):
            return gr.skip()
        step_choice, index = data[sample_step], data[sample_index]
        try:
            db = workspace.open_runs_db()
            shown = view.poll(db, att)
            choices = view.run_choices(db)
        except (MemFactoryError, OSError) as exc:  # e.g. a locked database: say so, try again next tick
            return {status: f"⚠️ {_message(exc)}", seen: last}
        labels_now = _labels(data[lang])
        updates: Updates = {status: view.status_markdown(shown, labels_now),
                            progress: view.progress_html(shown, labels_now), log_box: shown.log}
        run_dir = shown.run_dir
        metrics_path = RunDir(run_dir).metrics_path if run_dir else None
        samples_path = RunDir(run_dir).samples_path if run_dir else None
        signature = {"run": shown.run_id,
                     "files": view.file_signature(metrics_path, samples_path) if run_dir else [],
                     "runs": [c[0] for c in choices], "step": step_choice, "index": index}
        files_changed = signature["run"] != last.get("run") or signature["files"] != last.get("files")
        records = read_records(samples_path) if samples_path else []
        if files_changed:
            metrics = read_records(metrics_path) if metrics_path else []
            figs = plots.all_figures(metrics or None)
            figs["distribution"] = plots.reward_distribution_figure(records or None)
            figs["hardware"] = plots.hardware_figure(metrics or None)
            updates.update({figures[name]: figs[name] for name in figures})
        if files_changed or step_choice != last.get("step") or index != last.get("index"):
            browse = samples.browse_samples(records, step_choice, index)
            updates[sample_md] = browse.markdown
            updates[sample_step] = gr.update(
                choices=[("latest", "latest"), *[(f"step {s}", str(s)) for s in browse.steps]],
                value=step_choice if step_choice in ["latest", *map(str, browse.steps)] else "latest")
        if signature["runs"] != last.get("runs") or signature["run"] != last.get("run"):
            updates[run_pick] = gr.update(choices=choices, value=shown.run_id)
        updates[seen] = signature
        if not followed.is_current(session, att.run_id):  # the user picked another run while this poll ran
            return gr.skip()
        return updates

    refresh_inputs = {attached, lang, sample_step, sample_index, seen}
    refresh_outputs = [status, progress, *plot_list, sample_md, sample_step, log_box, run_pick, seen]
    timer.tick(refresh, refresh_inputs, refresh_outputs, show_progress="hidden", concurrency_limit=None)

    def on_load(state: dict, request: gr.Request) -> Updates:
        att = Attached.of(state)
        if not att.run_id:
            try:
                att = Attached(run_id=view.pick_run(workspace.open_runs_db()))
            except MemFactoryError as exc:
                gr.Warning(_message(exc).splitlines()[0])
        enable = button_on(True)
        return {attached: follow(request, att), seen: {}, preset: gr.update(choices=workspace.list_presets()),
                start_btn: enable, abort_btn: enable, resume_btn: enable}

    ctx.demo.load(on_load, attached, [attached, seen, preset, start_btn, abort_btn, resume_btn],
                  show_progress="hidden").then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")

    # ---------------------------------------------------------------- actions

    launch_inputs = {preset, devices, nproc, strategy, precision, *override_boxes.values()}

    def spec_of(data: dict[Any, Any]) -> tuple[command.LaunchSpec, list[str]]:
        """The spec of the tab's launch fields, plus the input errors that made parts of it fall back."""
        return command.spec_from_fields(data[devices], data[nproc], data[strategy], data[precision],
                                        {name: data[box] for name, box in override_boxes.items()}, cuda=hardware.cuda)

    def fresh_pending(name: str | None, spec: command.LaunchSpec) -> dict:
        """A new run id (and a free rendezvous port for several processes) for the next launch."""
        return {"preset": name, "run_id": process.new_run_id(name or "run"),
                "port": process.free_port() if spec.distributed else None}

    def preview(data: dict[Any, Any]) -> Updates:
        name, (spec, errors) = data[preset], spec_of(data)
        pend = dict(data[pending] or {})
        if not pend.get("run_id") or pend.get("preset") != name or (spec.distributed and not pend.get("port")):
            pend = fresh_pending(name, spec)
        check = actions.check_launch(name, spec, hardware)
        check.problems[:0] = errors
        line = actions.launch_preview(name, spec, run_id=pend["run_id"], port=pend.get("port"))
        return {checks_md: check.markdown(), command_box: line, pending: pend}

    preview_inputs = {*launch_inputs, pending}
    preview_outputs = [checks_md, command_box, pending]
    gr.on([preset.change, devices.change, nproc.change, strategy.change, precision.change,
           *[box.change for box in override_boxes.values()]],
          preview, preview_inputs, preview_outputs, show_progress="hidden")
    ctx.demo.load(lambda: command.hardware_markdown(command.detect_hardware()), None, hw_md,
                  show_progress="hidden").then(preview, preview_inputs, preview_outputs, show_progress="hidden")

    def on_start(data: dict[Any, Any], request: gr.Request) -> Updates:
        name, (spec, errors) = data[preset], spec_of(data)
        if errors:
            gr.Warning("; ".join(errors))
            return gr.skip()
        pend = data[pending] or {}
        try:
            att = actions.start(workspace.open_runs_db(), name, Attached.of(data[attached]), spec=spec,
                                run_id=pend.get("run_id"), port=pend.get("port"), force=bool(data[force]),
                                hardware=hardware)
        except MemFactoryError as exc:
            gr.Warning(_message(exc))
            return gr.skip()
        except OSError as exc:
            gr.Warning(f"could not start the trainer: {exc}")
            return gr.skip()
        gr.Info(f"started {att.run_id}")
        return {attached: follow(request, att), seen: {}, pending: fresh_pending(name, spec)}

    def on_abort(state: dict, request: gr.Request) -> Updates:
        try:
            att, what = actions.abort(workspace.open_runs_db(), Attached.of(state))
        except (MemFactoryError, OSError) as exc:
            gr.Warning(_message(exc))
            return gr.skip()
        gr.Info(f"{att.run_id}: {what}")
        return {attached: follow(request, att), seen: {}}

    def on_resume(run_id: str | None, state: dict, request: gr.Request) -> Updates:
        try:
            att = actions.resume(workspace.open_runs_db(), run_id, Attached.of(state))
        except MemFactoryError as exc:
            gr.Warning(_message(exc))
            return gr.skip()
        except OSError as exc:
            gr.Warning(f"could not resume: {exc}")
            return gr.skip()
        gr.Info(f"resuming {att.run_id}")
        return {attached: follow(request, att), seen: {}}

    def on_pick(run_id: str | None, request: gr.Request) -> Updates:
        return {attached: follow(request, Attached(run_id=run_id or None)), seen: {}}

    run_while_off(start_btn.click, start_btn, on_start, {*launch_inputs, force, pending, attached},
                  [attached, seen, pending], concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden").then(
        preview, preview_inputs, preview_outputs, show_progress="hidden")
    abort_btn.click(on_abort, attached, [attached, seen], concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    resume_btn.click(on_resume, [run_pick, attached], [attached, seen], concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    run_pick.input(on_pick, run_pick, [attached, seen], show_progress="hidden").then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    refresh_btn.click(dict, None, seen).then(refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    gr.on([sample_step.input, sample_index.release], refresh, refresh_inputs, refresh_outputs, show_progress="hidden")

    # the preset list follows Assemble: refreshed when this tab opens, and a preset picked or saved there is offered
    def presets_update(wanted: str | None, current: str | None):
        """The fresh list; the value changes only to ``wanted`` or away from a preset that is gone. A value
        sent back unchanged could undo a pick made while this event waited in the queue."""
        choices = workspace.list_presets()
        if wanted in choices and wanted != current:
            return gr.update(choices=choices, value=wanted)
        return refreshed_choices(choices, current, view.default_preset(choices))

    tab.select(lambda current: presets_update(None, current), preset, preset, show_progress="hidden")
    assemble_choice = ctx.shared.preset_choices  # lent by the Assemble tab; None when it failed to build
    if assemble_choice is not None:
        assemble_choice.change(presets_update, [assemble_choice, preset], preset, show_progress="hidden")
