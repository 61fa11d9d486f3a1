"""Export tab: a run's checkpoint as its LoRA adapter or merged into a full model, in a chosen dtype.

The work is ``webui.export.actions``' (``memfactory export``'s own code); this file draws and wires.
The command box shows what Export runs, as the Train tab shows its launch command.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.export import actions
from webui.export.actions import ExportRequest
from webui.i18n import t
from webui.playground.compare import describe_error
from webui.state import UIContext, Updates, refreshed_choices

NEWEST = "newest"  # the checkpoint choice meaning "the run's newest complete checkpoint"


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    with gr.Tab(t("tab.export"), id="export", elem_id="mf-tab-export") as tab:
        labels.add(tab, "tab.export")
        labels.add(gr.Markdown(t("ex.intro")), "ex.intro", "value")
        with gr.Row(equal_height=True):
            run = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label=t("ex.run"),
                              elem_id="mf-ex-run", scale=3)
            labels.add(run, "ex.run")
            checkpoint = gr.Dropdown(choices=[NEWEST], value=NEWEST, label=t("ex.checkpoint"),
                                     elem_id="mf-ex-ckpt", scale=2)
            labels.add(checkpoint, "ex.checkpoint")
            refresh = gr.Button(t("refresh"), elem_id="mf-ex-refresh", scale=1)
            labels.add(refresh, "refresh", "value")
        with gr.Row(equal_height=True):
            mode = gr.Radio(choices=[("LoRA adapter", "adapter"), ("merged model", "merged")], value="adapter",
                            label=t("ex.mode"), elem_id="mf-ex-mode", scale=2)
            labels.add(mode, "ex.mode")
            dtype = gr.Dropdown(choices=[("the run's own", ""), *[(d, d) for d in actions.EXPORT_DTYPES]], value="",
                                label=t("ex.dtype"), elem_id="mf-ex-dtype", scale=1)
            labels.add(dtype, "ex.dtype")
            out = gr.Textbox(label=t("ex.out"), elem_id="mf-ex-out", scale=3)
            labels.add(out, "ex.out")
            force = gr.Checkbox(value=False, label=t("ex.force"), elem_id="mf-ex-force", scale=1)
            labels.add(force, "ex.force")
        command = gr.Code(language="shell", label=t("ex.command"), interactive=False, wrap_lines=True,
                          elem_id="mf-ex-command")
        labels.add(command, "ex.command")
        export = gr.Button(t("ex.export"), variant="primary", elem_id="mf-ex-export")
        labels.add(export, "ex.export", "value")
        result = gr.Markdown(elem_id="mf-ex-result")
        files = gr.Dataframe(headers=actions.FILE_COLUMNS, interactive=False, label=t("ex.files"),
                             elem_id="mf-ex-files")
        labels.add(files, "ex.files")
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(value=actions.DEFAULT_PROMPT, label=t("ex.prompt"), elem_id="mf-ex-prompt", scale=4)
            labels.add(prompt, "ex.prompt")
            test = gr.Button(t("ex.test"), interactive=False, elem_id="mf-ex-test", scale=1)
            labels.add(test, "ex.test", "value")
        tested = gr.Markdown(elem_id="mf-ex-tested")
        folder = gr.State(None)

    choices = [run, checkpoint, mode, dtype, out, force]

    def request_of(data: dict[Any, Any]) -> ExportRequest:
        step = data[checkpoint]
        return ExportRequest(run=str(data[run] or "").strip(), checkpoint="" if step in (None, NEWEST) else step,
                             mode=data[mode] or "adapter", dtype=data[dtype] or "", out=str(data[out] or ""),
                             force=bool(data[force]))

    def on_change(data: dict[Any, Any]) -> Updates:
        if not data[run]:
            return {command: "# pick a run that has a checkpoint"}
        try:
            return {command: request_of(data).command().shell()}
        except Exception as exc:  # noqa: BLE001 - the box says what is wrong instead of a command
            return {command: f"# {describe_error(exc)}"}

    for widget in (checkpoint, mode, dtype, out, force):
        widget.change(on_change, set(choices), [command], show_progress="hidden")

    def on_run(data: dict[Any, Any]) -> Updates:
        steps = actions.checkpoint_choices(data[run])
        return {checkpoint: gr.update(choices=[NEWEST, *steps], value=NEWEST), **on_change({**data, checkpoint: NEWEST})}

    run.change(on_run, set(choices), [checkpoint, command], show_progress="hidden")

    def on_export(data: dict[Any, Any], progress=gr.Progress()) -> Updates:  # noqa: B008 - Gradio's way
        request = request_of(data)
        try:
            progress(0.1, desc="exporting (a merge loads the base model)")
            written = request.export()
            shown = actions.files_frame(written)
            usage = actions.usage(written, request)
        except Exception as exc:  # noqa: BLE001 - a readable line, never a traceback
            text = describe_error(exc)
            gr.Warning(text.splitlines()[0][:300])
            return {result: f"❌ {text}", files: None, test: gr.update(interactive=False), folder: None,
                    tested: ""}
        return {result: f"✅ exported to `{written}`\n\n{usage}", files: shown, test: gr.update(interactive=True),
                folder: (str(written), request), tested: ""}

    export.click(on_export, set(choices), [result, files, test, folder, tested], concurrency_limit=1)

    def on_test(exported: tuple[str, ExportRequest] | None, text: str) -> str:
        if not exported:
            return "❌ export first"
        try:
            outcome = actions.load_and_test(exported[0], exported[1], text)
        except Exception as exc:  # noqa: BLE001 - a readable line, never a traceback
            return f"❌ it does not load: {describe_error(exc)}"
        return (f"✅ loads: `{outcome.model}` answered in {outcome.seconds:.1f} s (greedy, "
                f"{actions.TEST_TOKENS} new tokens at most):\n\n> {outcome.text.strip() or '(empty answer)'}")

    test.click(on_test, [folder, prompt], tested, concurrency_limit=1)

    def on_refresh(current: str | None) -> Updates:
        return {run: refreshed_choices(actions.run_choices(), current)}

    refresh.click(on_refresh, run, [run], show_progress="hidden")
    ctx.demo.load(on_refresh, run, [run], show_progress="hidden")
