"""Playground tab: run 2-4 workflows on the same eval samples and compare them side by side.

All logic lives in ``webui.playground`` (no Gradio there); this file draws the widgets and wires
the events. Models stay loaded between runs in one process-wide cache (the next run lets go of
the ones it does not need), so rerunning with other settings does not reload SmolLM2.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from memfactory.errors import MemFactoryError
from webui import playground as pg
from webui import workspace
from webui.i18n import t
from webui.tabs import UIContext

ORDER = 30
FIELDS = ("on", "label", "preset", "checkpoint", "base_url", "model", "api_key_env")

_CACHE = pg.BackendCache(max_items=pg.MAX_WORKFLOWS)
_LOCK = threading.Lock()  # one comparison at a time: they share the cache and the CPU


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


def specs_from(values: list[Any]) -> list[pg.WorkflowSpec]:
    """The ticked slots' specs from the flat widget values (``FIELDS`` per slot)."""
    specs = []
    for start in range(0, len(values), len(FIELDS)):
        slot = dict(zip(FIELDS, values[start:start + len(FIELDS)]))
        if not slot.pop("on"):
            continue
        specs.append(pg.WorkflowSpec(**{k: str(v or "").strip() for k, v in slot.items()}))
    return specs


def settings_from(eval_set: str, n: Any, temperature: Any, max_tokens: Any, model: str) -> pg.RunSettings:
    return pg.RunSettings(
        eval_set=eval_set or pg.DEFAULT_SET,
        n=int(n or 1),
        temperature=float(temperature or 0.0),
        max_new_tokens=int(max_tokens) if max_tokens else None,
        model_override=(model or "").strip(),
    )


def _empty_outputs(message: str) -> list[Any]:
    return [message, None, None, gr.update(choices=[], value=None), pg.sample_html([], None),
            gr.update(value=None, interactive=False), gr.update(value=None, interactive=False), []]


def build(ctx: UIContext) -> None:
    labels = ctx.labels
    presets = workspace.list_presets()
    sets = pg.eval_set_choices()
    slots: list[list[Any]] = []
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
            model = gr.Textbox(value="", placeholder=pg.DEFAULT_MODEL + " (as in each preset)",
                               label=t("pg.model"), elem_id="mf-pg-model", scale=2)
            labels.add(model, "pg.model")
        with gr.Row(equal_height=False):
            for i in range(pg.MAX_WORKFLOWS):
                label, preset = pg.DEFAULT_WORKFLOWS[i] if i < len(pg.DEFAULT_WORKFLOWS) else ("", None)
                with gr.Column(min_width=220, elem_id=f"mf-pg-slot-{i}"):
                    on = gr.Checkbox(value=i < len(pg.DEFAULT_WORKFLOWS), label=t("pg.workflow", n=i + 1),
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
                slots.append([on, name, preset_dd, ckpt, base_url, served, key_env])
        with gr.Row():
            run_btn = gr.Button(t("pg.run"), variant="primary", elem_id="mf-pg-run", scale=3)
            labels.add(run_btn, "pg.run", "value")
            refresh = gr.Button(t("refresh"), elem_id="mf-pg-refresh", scale=1)
            labels.add(refresh, "refresh", "value")
        errors = gr.Markdown(elem_id="mf-pg-errors")
        summary = gr.Dataframe(headers=pg.SUMMARY_COLUMNS, interactive=False, label=t("pg.summary"),
                               elem_id="mf-pg-summary")
        labels.add(summary, "pg.summary")
        # one row per sample and workflow, fixed column widths, long text wrapped (see pg.comparison_frame)
        table = gr.Dataframe(headers=pg.COMPARISON_COLUMNS, column_widths=pg.COMPARISON_WIDTHS, interactive=False,
                             wrap=True, label=t("pg.table"), elem_id="mf-pg-table", max_height=600)
        labels.add(table, "pg.table")
        with gr.Row():
            sample = gr.Dropdown(choices=[], value=None, label=t("pg.sample"), elem_id="mf-pg-sample", scale=3)
            labels.add(sample, "pg.sample")
            csv_btn = gr.DownloadButton(t("pg.csv"), interactive=False, elem_id="mf-pg-csv", scale=1)
            labels.add(csv_btn, "pg.csv", "value")
            json_btn = gr.DownloadButton(t("pg.json"), interactive=False, elem_id="mf-pg-json", scale=1)
            labels.add(json_btn, "pg.json", "value")
        sample_view = gr.HTML(pg.sample_html([], None), elem_id="mf-pg-sample-html")
        state = gr.State([])

    flat = [w for slot in slots for w in slot]

    def on_run(eval_set_v, n_v, temp_v, max_tokens_v, model_v, *values, progress=gr.Progress()):  # noqa: B008 - Gradio's way
        try:
            specs = specs_from(list(values))
            settings = settings_from(eval_set_v, n_v, temp_v, max_tokens_v, model_v)
            progress(0.0, desc="starting")
            with _LOCK:
                results = pg.run_comparison(specs, settings, cache=_CACHE,
                                            progress=lambda f, text: progress(f, desc=text))
        except MemFactoryError as exc:
            gr.Warning(str(exc).splitlines()[0])
            return _empty_outputs(f"❌ {exc}")
        except Exception as exc:  # noqa: BLE001 - a readable box, never a traceback
            gr.Warning(pg.describe_error(exc))
            return _empty_outputs(f"❌ {pg.describe_error(exc)}")
        for r in results:
            if not r.ok:
                gr.Warning(f"{r.label}: {r.error.splitlines()[0] if r.error else 'failed'}")
        try:
            csv_path, json_path = pg.export_files(results, settings, export_folder())
            csv_up = gr.update(value=str(csv_path), interactive=True)
            json_up = gr.update(value=str(json_path), interactive=True)
        except OSError as exc:
            gr.Warning(f"export failed: {exc}")
            csv_up = json_up = gr.update(value=None, interactive=False)
        choices = pg.sample_choices(results)
        first = choices[0][1] if choices else None
        return [pg.errors_markdown(results), pg.summary_frame(results), pg.styled_comparison(results),
                gr.update(choices=choices, value=first), pg.sample_html(results, first), csv_up, json_up, results]

    run_btn.click(on_run, [eval_set, n, temperature, max_tokens, model, *flat],
                  [errors, summary, table, sample, sample_view, csv_btn, json_btn, state],
                  concurrency_limit=1)
    sample.change(lambda results, sid: pg.sample_html(results or [], sid), [state, sample], sample_view,
                  show_progress="hidden")

    def on_refresh():
        names, runs = workspace.list_presets(), pg.checkpoint_choices()
        sets_now = pg.eval_set_choices()
        return [gr.update(choices=sets_now)] + [gr.update(choices=names) for _ in slots] + [
            gr.update(choices=runs) for _ in slots]

    refresh_outputs = [eval_set] + [slot[2] for slot in slots] + [slot[3] for slot in slots]
    refresh.click(on_refresh, None, refresh_outputs)
    ctx.demo.load(on_refresh, None, refresh_outputs, show_progress="hidden")
