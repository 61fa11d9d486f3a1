"""Train tab: start, watch, abort and resume ``memfactory train`` runs.

The run is a separate process group (webui.runner), so closing the browser or restarting the UI
does not stop it; on load the tab follows the newest running run from the runs database. A
``gr.Timer`` polls the run (webui.train_view.poll) and redraws the curves only when metrics.jsonl
or samples.jsonl changed. All logic lives in webui.train_view; this file draws and wires.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from memfactory.errors import MemFactoryError
from memfactory.tracking.runs import RunsDB
from webui import launch_command, plots, runner, train_view, workspace
from webui.i18n import t
from webui.tabs import UIContext

ORDER = 20
TICK_S = 2.0
PLOTS = (("reward", "distribution"), ("loss", "kl"), ("length", "clip"), ("hardware",))
OVERRIDE_LABELS = {"steps": "steps", "lr": "learning rate", "group_size": "group size", "batch_size": "batch size",
                   "save_every": "save every (steps)", "sample_every": "samples every (steps)"}
log = logging.getLogger(__name__)


_DBS: dict[str, Any] = {}


def open_db():
    """The workspace's runs database, opened once (it keeps one connection per thread)."""
    path = str(workspace.runs_db())
    db = _DBS.get(path)
    if db is None or not db.path.exists():
        db = _DBS[path] = RunsDB(path)
    return db


def _labels(lang: str | None) -> dict[str, str]:
    lang = lang or "en"
    out = {status: t(f"status.{status}", lang) for status in ("starting", "running", "finished", "failed", "aborted")}
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
            preset = gr.Dropdown(choices=presets, value=train_view.default_preset(presets), label=t("train_preset"),
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
        hardware = launch_command.detect_hardware()
        with gr.Accordion("Devices, launch options and command", open=True, elem_id="mf-train-launch-acc"):
            hw_md = gr.Markdown(launch_command.hardware_markdown(hardware), elem_id="mf-train-hardware")
            with gr.Row(equal_height=True):
                devices = gr.Textbox(label="GPUs (CUDA_VISIBLE_DEVICES; empty = all)", placeholder="e.g. 0,1",
                                     elem_id="mf-train-devices", scale=2)
                nproc = gr.Number(value=1, precision=0, minimum=1, label="processes", elem_id="mf-train-nproc",
                                  scale=1)
                strategy = gr.Dropdown(choices=[(label, key) for key, label in launch_command.STRATEGY_LABELS.items()],
                                       value="single", label="strategy", elem_id="mf-train-strategy", scale=2)
                precision = gr.Dropdown(choices=[("from the preset", ""), *[(p, p) for p in launch_command.PRECISIONS]],
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
        log_box = gr.Textbox(label=t("train_log"), lines=10, max_lines=train_view.LOG_LINES, interactive=False, autoscroll=True,
                             elem_id="mf-train-log")
        labels.add(log_box, "train_log")
        timer = gr.Timer(TICK_S)

    attached = gr.State({})
    pending = gr.State({})  # the run id and rendezvous port the preview shows, used by the next Start
    seen = gr.State({})  # what the figures last showed: run id and the metrics/samples file signatures
    lang = ctx.lang if ctx.lang is not None else gr.State("en")
    plot_list = [figures[name] for row in PLOTS for name in row]

    # ---------------------------------------------------------------- refresh (timer, load, actions)

    def refresh(state: dict, lang_code: str, step_choice: Any, index: Any, last: dict):
        att = train_view.Attached.of(state)
        last = last or {}
        try:
            db = open_db()
            view = train_view.poll(db, att)
            choices = train_view.run_choices(db)
        except (MemFactoryError, OSError) as exc:  # e.g. a locked database: say so, try again next tick
            return [f"⚠️ {_message(exc)}", gr.skip(), *[gr.skip()] * len(plot_list), gr.skip(), gr.skip(), gr.skip(),
                    gr.skip(), last]
        labels_now = _labels(lang_code)
        outputs: list[Any] = [train_view.status_markdown(view, labels_now), train_view.progress_html(view, labels_now)]
        run_dir = view.run_dir
        metrics_path = run_dir / "metrics.jsonl" if run_dir else None
        samples_path = run_dir / "samples.jsonl" if run_dir else None
        signature = {"run": view.run_id,
                     "files": train_view.file_signature(metrics_path, samples_path) if run_dir else [],
                     "runs": [c[0] for c in choices], "step": step_choice, "index": index}
        files_changed = signature["run"] != last.get("run") or signature["files"] != last.get("files")
        samples = train_view.metrics_records(samples_path) if samples_path else []
        if files_changed:
            metrics = train_view.metrics_records(metrics_path) if metrics_path else []
            figs = plots.all_figures(metrics or None)
            figs["distribution"] = plots.reward_distribution_figure(samples or None)
            figs["hardware"] = plots.hardware_figure(metrics or None)
            outputs += [figs[name] for row in PLOTS for name in row]
        else:
            outputs += [gr.skip()] * len(plot_list)
        if files_changed or step_choice != last.get("step") or index != last.get("index"):
            browse = train_view.browse_samples(samples, step_choice, index)
            step_update = gr.update(choices=[("latest", "latest"), *[(f"step {s}", str(s)) for s in browse.steps]],
                                    value=step_choice if step_choice in ["latest", *map(str, browse.steps)]
                                    else "latest")
            outputs += [browse.markdown, step_update]
        else:
            outputs += [gr.skip(), gr.skip()]
        outputs.append(view.log)
        if signature["runs"] != last.get("runs") or signature["run"] != last.get("run"):
            outputs.append(gr.update(choices=choices, value=view.run_id))
        else:
            outputs.append(gr.skip())
        outputs.append(signature)
        return outputs

    refresh_inputs = [attached, lang, sample_step, sample_index, seen]
    refresh_outputs = [status, progress, *plot_list, sample_md, sample_step, log_box, run_pick, seen]
    timer.tick(refresh, refresh_inputs, refresh_outputs, show_progress="hidden", concurrency_limit=None)

    def on_load(state: dict):
        att = train_view.Attached.of(state)
        if not att.run_id:
            try:
                att = train_view.Attached(run_id=train_view.pick_run(open_db()))
            except MemFactoryError as exc:
                gr.Warning(_message(exc).splitlines()[0])
        enable = gr.update(interactive=True)
        return att.to_dict(), {}, gr.update(choices=workspace.list_presets()), enable, enable, enable

    ctx.demo.load(on_load, attached, [attached, seen, preset, start_btn, abort_btn, resume_btn],
                  show_progress="hidden").then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")

    # ---------------------------------------------------------------- actions

    launch_inputs = [preset, devices, nproc, strategy, precision, *override_boxes.values()]

    def launch_spec(device_text: Any, processes: Any, strategy_key: Any, precision_key: Any,
                    *values: Any) -> tuple[launch_command.LaunchSpec, list[str]]:
        """The spec of the tab's launch fields, plus the input errors that made parts of it fall back."""
        errors: list[str] = []
        try:
            picked = launch_command.parse_devices(device_text)
        except ValueError as exc:
            picked, errors = [], [str(exc)]
        try:
            overrides = launch_command.coerce_overrides(dict(zip(override_boxes, values, strict=True)))
        except ValueError as exc:
            overrides = {}
            errors.append(str(exc))
        try:
            count = int(processes) if processes not in (None, "") else 1
        except (TypeError, ValueError):
            count, errors = 1, [*errors, f"processes must be a whole number, not {processes!r}"]
        spec = launch_command.LaunchSpec(strategy=str(strategy_key or "single"), num_processes=count, devices=picked,
                                         cuda=hardware.cuda, precision=precision_key or None, overrides=overrides)
        return spec, errors

    def fresh_pending(name: str | None, spec: launch_command.LaunchSpec) -> dict:
        """A new run id (and a free rendezvous port for several processes) for the next launch."""
        return {"preset": name, "run_id": runner.new_run_id(name or "run"),
                "port": runner.free_port() if spec.distributed else None}

    def on_preview(name: str | None, *fields: Any, pending_now: dict | None = None):
        spec, errors = launch_spec(*fields)
        pend = dict(pending_now or {})
        if not pend.get("run_id") or pend.get("preset") != name or (spec.distributed and not pend.get("port")):
            pend = fresh_pending(name, spec)
        check = train_view.check_launch(name, spec, hardware)
        check.problems[:0] = errors
        command = train_view.launch_preview(name, spec, run_id=pend["run_id"], port=pend.get("port"))
        return check.markdown(), command, pend

    def preview(name: str | None, *rest: Any):
        *fields, pend = rest
        return on_preview(name, *fields, pending_now=pend)

    preview_outputs = [checks_md, command_box, pending]
    gr.on([preset.change, devices.change, nproc.change, strategy.change, precision.change,
           *[box.change for box in override_boxes.values()]],
          preview, [*launch_inputs, pending], preview_outputs, show_progress="hidden")
    ctx.demo.load(lambda: launch_command.hardware_markdown(launch_command.detect_hardware()), None, hw_md,
                  show_progress="hidden").then(preview, [*launch_inputs, pending], preview_outputs,
                                               show_progress="hidden")

    def on_start(name: str | None, *rest: Any):
        *fields, force_it, pend, state = rest
        spec, errors = launch_spec(*fields)
        if errors:
            gr.Warning("; ".join(errors))
            return gr.skip(), gr.skip(), gr.skip()
        pend = pend or {}
        try:
            att = train_view.start(open_db(), name, train_view.Attached.of(state), spec=spec, run_id=pend.get("run_id"),
                                   port=pend.get("port"), force=bool(force_it), hardware=hardware)
        except MemFactoryError as exc:
            gr.Warning(_message(exc))
            return gr.skip(), gr.skip(), gr.skip()
        except OSError as exc:
            gr.Warning(f"could not start the trainer: {exc}")
            return gr.skip(), gr.skip(), gr.skip()
        gr.Info(f"started {att.run_id}")
        return att.to_dict(), {}, fresh_pending(name, spec)

    def on_abort(state: dict):
        att = train_view.Attached.of(state)
        try:
            att, what = train_view.abort(open_db(), att)
        except (MemFactoryError, OSError) as exc:
            gr.Warning(_message(exc))
            return gr.skip(), gr.skip()
        gr.Info(f"{att.run_id}: {what}")
        return att.to_dict(), {}

    def on_resume(run_id: str | None, state: dict):
        try:
            att = train_view.resume(open_db(), run_id, train_view.Attached.of(state))
        except MemFactoryError as exc:
            gr.Warning(_message(exc))
            return gr.skip(), gr.skip()
        except OSError as exc:
            gr.Warning(f"could not resume: {exc}")
            return gr.skip(), gr.skip()
        gr.Info(f"resuming {att.run_id}")
        return att.to_dict(), {}

    def on_pick(run_id: str | None):
        return train_view.Attached(run_id=run_id or None).to_dict(), {}

    start_btn.click(on_start, [*launch_inputs, force, pending, attached], [attached, seen, pending],
                    concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden").then(
        preview, [*launch_inputs, pending], preview_outputs, show_progress="hidden")
    abort_btn.click(on_abort, attached, [attached, seen], concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    resume_btn.click(on_resume, [run_pick, attached], [attached, seen], concurrency_limit=1).then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    run_pick.input(on_pick, run_pick, [attached, seen], show_progress="hidden").then(
        refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    refresh_btn.click(dict, None, seen).then(refresh, refresh_inputs, refresh_outputs, show_progress="hidden")
    gr.on([sample_step.input, sample_index.release], refresh, refresh_inputs, refresh_outputs, show_progress="hidden")

    # the preset list follows Assemble: refreshed when this tab opens, and a preset picked or saved there is offered
    def presets_update(current: str | None):
        choices = workspace.list_presets()
        return gr.update(choices=choices, value=current if current in choices else train_view.default_preset(choices))

    tab.select(presets_update, preset, preset, show_progress="hidden")
    assemble_choice = ctx.shared.get("preset_choices")
    if assemble_choice is not None:
        assemble_choice.change(
            lambda chosen, current: presets_update(chosen or current), [assemble_choice, preset], preset,
            show_progress="hidden")
