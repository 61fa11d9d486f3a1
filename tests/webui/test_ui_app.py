"""The app builds from the registry, has the tabs, and relabels them for each locale."""

from __future__ import annotations

import gradio as gr

from webui import i18n
from webui.app import TABS, build_app


def test_build_app_has_assemble_and_runs_tabs():
    demo = build_app()
    assert isinstance(demo, gr.Blocks)
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    labels = [tab.label for tab in tabs]
    assert "Assemble" in labels and "Runs" in labels
    assert not any(label.startswith("⚠️") for label in labels), labels  # no tab failed to build
    assert [name for name, _ in TABS] == ["assemble", "train", "playground", "chat", "export", "runs"]
    assert labels[:6] == ["Assemble", "Train", "Playground", "Chat", "Export", "Runs"]  # Assemble lends to later tabs


def test_every_label_has_english_and_chinese():
    for key, entry in i18n.TEXT.items():
        assert entry.get("en") and entry.get("zh"), key
        assert entry["en"] != entry["zh"] or key.startswith("section."), key
    assert i18n.t("tab.assemble", "zh") == "组装"
    assert i18n.t("tab.assemble", "fr") == "Assemble"  # unknown locale falls back to English
    assert i18n.t("empty_registry", "en", kinds="agent").count("agent") >= 1


def test_labels_relabel_registered_components():
    labels = i18n.Labels()
    with gr.Blocks():
        button = gr.Button("x")
        box = gr.Textbox(label="y")
        labels.add(button, "save", "value")
        labels.add(box, "yaml")
        labels.add(box, "cli", "info")  # two attributes of one component become one update
    assert labels.components == [button, box]
    assert labels.texts("zh") == [{"value": "💾 保存预设"}, {"label": "预设 (YAML)", "info": "等效命令"}]
    assert len(labels.updates("en")) == 2


def test_app_builds_with_an_empty_registry(monkeypatch):
    """Before any component is registered the UI still starts and says what is missing."""
    from memfactory import registry
    from webui.assemble.form import build_form, check

    monkeypatch.setattr(registry.REGISTRY, "_entries", {kind: {} for kind in registry.KINDS})
    monkeypatch.setattr(registry, "_loaded", True)
    form = build_form()
    assert form.empty_kinds == list(registry.KINDS)
    _, preset, problems = check(form, form.defaults())
    assert preset is None and any(path == "agent" for path, _ in problems)
    demo = build_app()
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "mf-empty-registry"]
    assert notes and "agent" in notes[0]
