"""Playground tab: run 2-4 workflows on the same eval samples and compare them side by side.

Running is ``webui.playground.compare``'s and showing ``webui.playground.render``'s (no Gradio
there); this file draws the widgets and wires the events. Models stay loaded between runs in one
process-wide cache (the next run lets go of the ones it does not need), so rerunning with other
settings does not reload SmolLM2.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from memfactory.errors import MemFactoryError
from webui import workspace
from webui.i18n import t
from webui.playground import compare, render
from webui.playground.compare import RunSettings, WorkflowResult, WorkflowSpec
from webui.state import UIContext, Updates, run_while_off

_CACHE = compare.BackendCache(max_items=compare.MAX_WORKFLOWS)
_LOCK = threading.Lock()  # one comparison at a time: they share the cache and the CPU


@dataclass(frozen=True)
class Slot:
    """One workflow column's widgets; each field but ``on`` fills the WorkflowSpec field of its name."""

    on: Any
    label: Any
    preset: Any
    checkpoint: Any
    base_url: Any
    model: Any
    api_key_env: Any

    @property
    def components(self) -> tuple[Any, ...]:
        return tuple(getattr(self, item.name) for item in fields(self))

    def spec(self, data: dict[Any, Any]) -> WorkflowSpec | None:
        """The workflow this column describes in ``data`` (component -> value); None when it is not ticked."""
        if not data[self.on]:
            return None
        return WorkflowSpec(label=_text(data[self.label]), preset=_text(data[self.preset]),
                            checkpoint=_text(data[self.checkpoint]), base_url=_text(data[self.base_url]),
                            model=_text(data[self.model]), api_key_env=_text(data[self.api_key_env]))


def _text(value: Any) -> str:
    return str(value or "").strip()


def specs_from(slots: Sequence[Slot], data: dict[Any, Any]) -> list[WorkflowSpec]:
    """The ticked columns' specs, in column order."""
    return [spec for spec in (slot.spec(data) for slot in slots) if spec is not None]


def settings_from(eval_set: str, n: Any, temperature: Any, max_tokens: Any, model: str) -> RunSettings:
    return RunSettings(
        eval_set=eval_set or compare.DEFAULT_SET,
        n=int(n or 1),
        temperature=float(temperature or 0.0),
        max_new_tokens=int(max_tokens) if max_tokens else None,
        model_override=(model or "").strip(),
    )


@dataclass(frozen=True)
class ResultsView:
    """The components that show a comparison; :meth:`show` is the one place that fills them all."""

    errors: Any
    summary: Any
    table: Any
    sample: Any
    sample_view: Any
    csv: Any
    json: Any
    state: Any  # gr.State: the results, for the sample dropdown

    @property
    def components(self) -> list[Any]:
        return [self.errors, self.summary, self.table, self.sample, self.sample_view, self.csv, self.json, self.state]

    def show(self, results: list[WorkflowResult], message: str | None = None,
             files: tuple[Path, Path] | None = None) -> Updates:
        """Updates showing ``results`` (none: a failed run, with ``message``) and the export ``files``."""
        choices = render.sample_choices(results)
        first = choices[0][1] if choices else None

        def download(path: Path | None) -> Any:
            return gr.update(value=str(path), interactive=True) if path else gr.update(value=None, interactive=False)

        csv_path, json_path = files or (None, None)
        return {
            self.errors: render.errors_markdown(results) if message is None else message,
            self.summary: render.summary_frame(results) if results else None,
            self.table: render.styled_comparison(results) if results else None,
            self.sample: gr.update(choices=choices, value=first),
            self.sample_view: render.sample_html(results, first),
            self.csv: download(csv_path), self.json: download(json_path), self.state: results,
        }


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    presets = workspace.list_presets()
    sets = compare.eval_set_choices()
    slots: list[Slot] = []
    with gr.Tab(t("tab.playground"), id="playground", elem_id="mf-tab-playground") as tab:
        labels.add(tab, "tab.playground")
        labels.add(gr.Markdown(t("pg.intro")), "pg.intro", "value")
        with gr.Row():
            eval_set = gr.Dropdown(choices=sets, value=sets[0] if sets else None, allow_custom_value=True,
                                   label=t("pg.set"), elem_id="mf-pg-set", scale=2)
            labels.add(eval_set, "pg.set")
            n = gr.Number(value=4, precision=0, minimum=1, maximum=500, label=t("pg.n"), elem_id="mf-pg-n", scale=1)
            labels.add(n, "pg.n")
            temperature = gr.Number(value=0.0, minimum=0.0, maximum=2.0, step=0.1, label=t("pg.temperature"),
                                    elem_id="mf-pg-temp", scale=1)
            labels.add(temperature, "pg.temperature")
            max_tokens = gr.Number(value=0, precision=0, minimum=0, label=t("pg.max_tokens"),
                                   elem_id="mf-pg-max-tokens", scale=1)
            labels.add(max_tokens, "pg.max_tokens")
            model = gr.Textbox(value="", placeholder=compare.DEFAULT_MODEL + " (as in each preset)",
                               label=t("pg.model"), elem_id="mf-pg-model", scale=2)
            labels.add(model, "pg.model")
        with gr.Row(equal_height=False):
            for i in range(compare.MAX_WORKFLOWS):
                label, preset = compare.DEFAULT_WORKFLOWS[i] if i < len(compare.DEFAULT_WORKFLOWS) else ("", None)
                with gr.Column(min_width=220, elem_id=f"mf-pg-slot-{i}"):
                    on = gr.Checkbox(value=i < len(compare.DEFAULT_WORKFLOWS), label=t("pg.workflow", n=i + 1),
                                     elem_id=f"mf-pg-on-{i}")
                    labels.add(on, "pg.workflow", n=i + 1)
                    name = gr.Textbox(value=label, label=t("pg.label"), elem_id=f"mf-pg-label-{i}")
                    labels.add(name, "pg.label")
                    preset_dd = gr.Dropdown(choices=presets, value=preset if preset in presets else None,
                                            allow_custom_value=True, label=t("pg.preset"),
                                            elem_id=f"mf-pg-preset-{i}")
                    labels.add(preset_dd, "pg.preset")
                    ckpt = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label=t("pg.checkpoint"),
                                       elem_id=f"mf-pg-ckpt-{i}")
                    labels.add(ckpt, "pg.checkpoint")
                    with gr.Accordion(t("pg.endpoint"), open=False) as acc:
                        labels.add(acc, "pg.endpoint")
                        base_url = gr.Textbox(placeholder="http://127.0.0.1:8000/v1", label=t("pg.base_url"),
                                              elem_id=f"mf-pg-url-{i}")
                        labels.add(base_url, "pg.base_url")
                        served = gr.Textbox(label=t("pg.served_model"), elem_id=f"mf-pg-served-{i}")
                        labels.add(served, "pg.served_model")
                        key_env = gr.Textbox(value="OPENAI_API_KEY", label=t("pg.key_env"),
                                             elem_id=f"mf-pg-keyenv-{i}")
                        labels.add(key_env, "pg.key_env")
                slots.append(Slot(on, name, preset_dd, ckpt, base_url, served, key_env))
        with gr.Row():
            run_btn = gr.Button(t("pg.run"), variant="primary", elem_id="mf-pg-run", scale=3)
            labels.add(run_btn, "pg.run", "value")
            refresh = gr.Button(t("refresh"), elem_id="mf-pg-refresh", scale=1)
            labels.add(refresh, "refresh", "value")
        errors = gr.Markdown(elem_id="mf-pg-errors")
        summary = gr.Dataframe(headers=render.SUMMARY_COLUMNS, interactive=False, label=t("pg.summary"),
                               elem_id="mf-pg-summary")
        labels.add(summary, "pg.summary")
        # one row per sample and workflow, fixed column widths, long text wrapped (see render.comparison_frame)
        table = gr.Dataframe(headers=render.COMPARISON_COLUMNS, column_widths=render.COMPARISON_WIDTHS,
                             interactive=False, wrap=True, label=t("pg.table"), elem_id="mf-pg-table", max_height=600)
        labels.add(table, "pg.table")
        with gr.Row():
            sample = gr.Dropdown(choices=[], value=None, label=t("pg.sample"), elem_id="mf-pg-sample", scale=3)
            labels.add(sample, "pg.sample")
            csv_btn = gr.DownloadButton(t("pg.csv"), interactive=False, elem_id="mf-pg-csv", scale=1)
            labels.add(csv_btn, "pg.csv", "value")
            json_btn = gr.DownloadButton(t("pg.json"), interactive=False, elem_id="mf-pg-json", scale=1)
            labels.add(json_btn, "pg.json", "value")
        sample_view = gr.HTML(render.sample_html([], None), elem_id="mf-pg-sample-html")
        state = gr.State([])

    view = ResultsView(errors, summary, table, sample, sample_view, csv_btn, json_btn, state)

    def on_run(data: dict[Any, Any], progress=gr.Progress()) -> Updates:  # noqa: B008 - Gradio's way
        try:
            specs = specs_from(slots, data)
            settings = settings_from(data[eval_set], data[n], data[temperature], data[max_tokens], data[model])
            progress(0.0, desc="starting")
            with _LOCK:
                results = compare.run_comparison(specs, settings, cache=_CACHE,
                                                 progress=lambda f, text: progress(f, desc=text))
        except MemFactoryError as exc:
            gr.Warning(str(exc).splitlines()[0])
            return view.show([], f"❌ {exc}")
        except Exception as exc:  # noqa: BLE001 - a readable box, never a traceback
            gr.Warning(compare.describe_error(exc))
            return view.show([], f"❌ {compare.describe_error(exc)}")
        for r in results:
            if not r.ok:
                gr.Warning(f"{r.label}: {r.error.splitlines()[0] if r.error else 'failed'}")
        try:
            files = render.export_files(results, settings, render.export_folder())
        except OSError as exc:
            gr.Warning(f"export failed: {exc}")
            files = None
        return view.show(results, files=files)

    run_inputs = {eval_set, n, temperature, max_tokens, model, *[w for slot in slots for w in slot.components]}
    run_while_off(run_btn.click, run_btn, on_run, run_inputs, view.components, concurrency_limit=1)
    sample.change(lambda results, sid: render.sample_html(results or [], sid), [state, sample], sample_view,
                  show_progress="hidden")

    def on_refresh() -> Updates:
        names, runs = workspace.list_presets(), compare.checkpoint_choices()
        updates: Updates = {eval_set: gr.update(choices=compare.eval_set_choices())}
        for slot in slots:
            updates[slot.preset] = gr.update(choices=names)
            updates[slot.checkpoint] = gr.update(choices=runs)
        return updates

    refresh_outputs = [eval_set, *[slot.preset for slot in slots], *[slot.checkpoint for slot in slots]]
    refresh.click(on_refresh, None, refresh_outputs)
    ctx.demo.load(on_refresh, None, refresh_outputs, show_progress="hidden")
