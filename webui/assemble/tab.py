"""Assemble tab: build a preset from dropdowns and schema-generated forms, preview, save, load.

Every field comes from ``webui.assemble.form.build_form()`` (registry + pydantic schemas) and every
file from ``webui.assemble.files``; this file only draws the widgets and wires the events.
Validation is ``memfactory.config.parse_preset``; each problem is shown inline on its widget and
listed beside the preview. The tab lends its saved-presets dropdown and its form to later tabs
(``ctx.shared.preset_choices``, ``ctx.shared.open_in_assemble``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from memfactory.errors import MemFactoryError
from webui import workspace
from webui.assemble.files import cli_command, download_file, file_stem, load, load_file, plan_for_preview, save
from webui.assemble.form import AGENT_KEY, ENV_KEY, FormField, build_form, check, problem_fields, problems_markdown
from webui.i18n import t
from webui.state import OpenInAssemble, UIContext, Updates

INVALID_CLASS = "mf-invalid"


def elem_id(key: str) -> str:
    """A stable DOM id for a field (browser tests and CSS find widgets by it)."""
    return "mf-" + re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")


def make_widget(item: FormField) -> Any:
    spec = item.spec
    common = {"label": spec.name, "info": spec.info or None, "elem_id": elem_id(item.key)}
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, allow_custom_value=spec.allow_custom,
                           **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), **common)
    if spec.kind in ("int", "float") and spec.optional:  # gr.Number cannot hold "unset": empty text means None
        return gr.Textbox(value=spec.default, placeholder="(none)", **common)
    if spec.kind in ("int", "float"):
        return gr.Number(value=spec.default, precision=0 if spec.kind == "int" else None, **common)
    long = isinstance(spec.default, str) and ("\n" in spec.default or len(spec.default) > 80)
    return gr.Textbox(value=spec.default, lines=4 if long else 1, max_lines=12, **common)


def build(ctx: UIContext) -> None:
    form = build_form()
    labels = ctx.labels
    widgets: list[Any] = [None] * len(form.fields)
    groups: list[tuple[Any, tuple]] = []
    pending = set(range(len(form.fields)))
    defaults = form.defaults()

    def draw(predicate, per_row: int = 3) -> None:
        chosen = [i for i in sorted(pending) if predicate(form.fields[i])]
        for start in range(0, len(chosen), per_row):
            with gr.Row():
                for i in chosen[start:start + per_row]:
                    widgets[i] = make_widget(form.fields[i])
                    pending.discard(i)

    def key(k: str):
        return lambda item: item.key == k

    def prefix(p: str):
        return lambda item: item.key.startswith(p)

    with gr.Tab(t("tab.assemble"), id="assemble", elem_id="mf-tab-assemble") as tab:
        labels.add(tab, "tab.assemble")
        if form.empty_kinds:
            labels.add(gr.Markdown(t("empty_registry", kinds=", ".join(form.empty_kinds)), elem_id="mf-empty-registry"),
                       "empty_registry", "value", kinds=", ".join(form.empty_kinds))
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                labels.add(gr.Markdown(t("section.preset")), "section.preset", "value")
                draw(lambda item: item.key in ("name", "description"), per_row=2)
                labels.add(widgets[form.index("name")], "preset_name")
                labels.add(widgets[form.index("description")], "description")

                labels.add(gr.Markdown(t("section.agent")), "section.agent", "value")
                draw(key(AGENT_KEY))
                labels.add(widgets[form.index(AGENT_KEY)], "agent")
                for agent, slots in form.agents.items():
                    scope = ((AGENT_KEY, agent),)
                    with gr.Group(visible=form.scope_active(scope, defaults)) as group:
                        groups.append((group, scope))
                        for slot, allowed in slots.items():
                            slot_key = f"slot:{agent}:{slot}"
                            draw(key(slot_key))
                            for module in allowed:
                                scope = ((AGENT_KEY, agent), (slot_key, module))
                                with gr.Group(visible=form.scope_active(scope, defaults)) as sub:
                                    groups.append((sub, scope))
                                    draw(prefix(f"module:{agent}:{slot}:{module}."))
                        if any(item.key.startswith(f"agent_options:{agent}.") for item in form.fields):
                            with gr.Accordion(t("section.agent_options"), open=False) as acc:
                                labels.add(acc, "section.agent_options")
                                draw(prefix(f"agent_options:{agent}."))

                labels.add(gr.Markdown(t("section.model")), "section.model", "value")
                draw(lambda item: item.key in ("model.backend", "model.path"), per_row=2)
                labels.add(widgets[form.index("model.backend")], "backend")
                labels.add(widgets[form.index("model.path")], "model_path")
                with gr.Accordion(t("section.model_options"), open=False) as acc:
                    labels.add(acc, "section.model_options")
                    draw(prefix("model."))

                labels.add(gr.Markdown(t("section.env")), "section.env", "value")
                draw(key(ENV_KEY))
                labels.add(widgets[form.index(ENV_KEY)], "env")
                for env in form.envs:
                    scope = ((ENV_KEY, env),)
                    with gr.Group(visible=form.scope_active(scope, defaults)) as group:
                        groups.append((group, scope))
                        draw(prefix(f"env:{env}."))

                labels.add(gr.Markdown(t("section.rewards")), "section.rewards", "value")
                for reward in form.rewards:
                    with gr.Row():
                        for i in (form.index(f"reward_on:{reward}"), form.index(f"reward:{reward}")):
                            widgets[i] = make_widget(form.fields[i])
                            pending.discard(i)

                with gr.Accordion(t("section.trainer"), open=False, elem_id="mf-acc-trainer") as acc:
                    labels.add(acc, "section.trainer")
                    draw(prefix("trainer."), per_row=4)
                with gr.Accordion(t("section.logging"), open=False) as acc:
                    labels.add(acc, "section.logging")
                    draw(prefix("logging."), per_row=4)
                draw(lambda item: True)  # anything a new schema adds that has no place above

            with gr.Column(scale=2):
                problems_md = gr.Markdown(elem_id="mf-problems")
                labels.add(problems_md, "problems", "label")
                yaml_code = gr.Code(language="yaml", label=t("yaml"), elem_id="mf-yaml", interactive=False)
                labels.add(yaml_code, "yaml")
                cli = gr.Textbox(label=t("cli"), elem_id="mf-cli", interactive=False)
                labels.add(cli, "cli")
                download = gr.DownloadButton(t("download"), elem_id="mf-download", interactive=False)
                labels.add(download, "download", "value")
                with gr.Accordion("Will it fit? (memory planner)", open=False, elem_id="mf-plan-acc"):
                    with gr.Row():
                        plan_gpus = gr.Number(value=1, precision=0, minimum=1, label="GPUs (processes)",
                                              elem_id="mf-plan-gpus")
                        plan_mem = gr.Textbox(value="", placeholder="detected", label="GiB per device",
                                              elem_id="mf-plan-mem")
                    plan_btn = gr.Button("Estimate peak memory", elem_id="mf-plan")
                    plan_md = gr.Markdown(elem_id="mf-plan-out")
                with gr.Group():
                    save_name = gr.Textbox(label=t("save_name"), placeholder="my_preset", elem_id="mf-save-name")
                    labels.add(save_name, "save_name")
                    overwrite = gr.Checkbox(label=t("overwrite"), value=False, elem_id="mf-overwrite")
                    labels.add(overwrite, "overwrite")
                    save_btn = gr.Button(t("save"), variant="primary", elem_id="mf-save")
                    labels.add(save_btn, "save", "value")
                with gr.Group():
                    with gr.Row():
                        choices = gr.Dropdown(choices=workspace.list_presets(), value=None, label=t("load_choice"),
                                              elem_id="mf-load-choice", scale=3)
                        labels.add(choices, "load_choice")
                        refresh_btn = gr.Button(t("refresh"), elem_id="mf-refresh", scale=1)
                        labels.add(refresh_btn, "refresh", "value")
                    load_btn = gr.Button(t("load"), elem_id="mf-load")
                    labels.add(load_btn, "load", "value")
                status = gr.Markdown(elem_id="mf-status")
    flagged = gr.State({})  # field index -> the problem its widget shows now
    infos = [item.spec.info or None for item in form.fields]
    n = len(widgets)
    lang = ctx.lang if ctx.lang is not None else gr.State("en")

    def values_of(data: dict[Any, Any]) -> list[Any]:
        return [data[w] for w in widgets]

    def preview(data: dict[Any, Any]) -> Updates:
        values, previous = values_of(data), data[flagged]
        checked, preset, problems = check(form, values)
        stem = file_stem(data[save_name], checked)
        text = preset.to_yaml() if preset else yaml.safe_dump(checked, sort_keys=False, allow_unicode=True)
        marks = problem_fields(form, values, problems)
        updates: Updates = {
            problems_md: problems_markdown(problems, data[lang] or "en"), yaml_code: text, cli: cli_command(stem),
            download: (gr.update(value=download_file(stem, text), interactive=True) if preset
                       else gr.update(value=None, interactive=False)),
            flagged: marks,
        }
        for i in range(n):  # only the widgets whose problem changed (the others are left alone)
            if i in marks and previous.get(i) != marks[i]:
                updates[widgets[i]] = gr.update(info=f"⚠️ {marks[i]}", elem_classes=[INVALID_CLASS])
            elif i not in marks and i in previous:
                updates[widgets[i]] = gr.update(info=infos[i], elem_classes=[])
        return updates

    preview_outputs = [problems_md, yaml_code, cli, download, flagged, *widgets]
    preview_inputs = {*widgets, save_name, flagged, lang}
    gr.on([w.change for w in widgets] + [save_name.change, lang.change], preview, preview_inputs, preview_outputs,
          trigger_mode="always_last", show_progress="hidden")
    ctx.demo.load(preview, preview_inputs, preview_outputs, show_progress="hidden")

    def visibility(data: dict[Any, Any]) -> Updates:
        values = values_of(data)
        return {group: gr.update(visible=form.scope_active(scope, values)) for group, scope in groups}

    controllers = [widgets[i] for i, item in enumerate(form.fields)
                   if item.key in (AGENT_KEY, ENV_KEY) or item.key.startswith("slot:")]
    group_outputs = [g for g, _ in groups]
    if group_outputs:
        gr.on([c.change for c in controllers], visibility, set(widgets), group_outputs, show_progress="hidden")
        ctx.demo.load(visibility, set(widgets), group_outputs, show_progress="hidden")

    def on_save(data: dict[Any, Any]) -> Updates:
        try:
            path, _ = save(form, values_of(data), data[save_name], bool(data[overwrite]))
        except MemFactoryError as exc:
            gr.Warning(str(exc).splitlines()[0])
            return {status: f"❌ {exc}".replace("\n", "  \n")}
        gr.Info(f"saved {path.name}")
        return {status: f"✅ saved `{path}`", choices: gr.update(choices=workspace.list_presets(), value=path.stem)}

    save_btn.click(on_save, {*widgets, save_name, overwrite}, [status, choices])

    def loaded(values: list[Any], notes: list[str], path: Path, save_as: str) -> Updates:
        message = f"📂 loaded `{path}`"
        if notes:
            message += "\n\n" + "\n".join(f"- {note}" for note in notes)
        return {status: message, save_name: save_as, **dict(zip(widgets, values, strict=True))}

    def on_load(name: str) -> Updates:
        if not name:
            return {status: "⚠️ choose a saved preset first"}
        try:
            values, notes, path = load(form, name)
        except (MemFactoryError, OSError, yaml.YAMLError) as exc:
            gr.Warning(str(exc).splitlines()[0])
            return {status: f"❌ {exc}"}
        return loaded(values, notes, path, path.stem)

    def fill_from_file(path: Path) -> Updates:
        """Updates for ``load_outputs`` showing the preset file ``path`` (confined by the caller).

        Raises MemFactoryError / OSError / yaml.YAMLError when it cannot be read; the form is then untouched.
        """
        values, notes = load_file(form, Path(path))
        name = str(values[form.index("name")] or "").strip()
        try:
            save_as = workspace.check_name(name)
        except MemFactoryError:
            save_as = ""
        return loaded(values, notes, Path(path), save_as)

    plan_btn.click(plan_for_preview, [yaml_code, plan_gpus, plan_mem], plan_md)

    load_outputs = [status, save_name, *widgets]
    load_btn.click(on_load, choices, load_outputs)
    refresh_btn.click(lambda: gr.update(choices=workspace.list_presets()), None, choices)
    ctx.demo.load(lambda: gr.update(choices=workspace.list_presets()), None, choices)
    ctx.shared.preset_choices = choices
    ctx.shared.open_in_assemble = OpenInAssemble(outputs=tuple(load_outputs), fill=fill_from_file)
