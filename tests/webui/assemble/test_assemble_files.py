"""Saving, loading and downloading the assembled preset, and planning it (webui.assemble.files)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from memfactory.errors import MemFactoryError
from memfactory.paths import presets_dir
from webui import workspace
from webui.assemble import files
from webui.assemble.form import build_form


def test_save_and_load_in_the_workspace(uit_values, tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path))
    form = build_form()
    values = uit_values(form, **{"name": "saved_one", "trainer.steps": 4})
    path, text = files.save(form, values, "", False)
    assert path == tmp_path.resolve() / "presets" / "saved_one.yaml" and "steps: 4" in text
    with pytest.raises(MemFactoryError, match="already exists"):
        files.save(form, values, "", False)
    files.save(form, uit_values(form, **{"name": "saved_one", "trainer.steps": 5}), "", True)
    with pytest.raises(MemFactoryError):
        files.save(form, values, "../escape", True)
    with pytest.raises(MemFactoryError, match="invalid preset"):
        files.save(form, uit_values(form, **{"trainer.steps": 0}), "bad", False)
    assert not (tmp_path / "presets" / "bad.yaml").exists()
    loaded, notes, where = files.load(form, "saved_one")
    assert where == path and notes == []
    assert loaded[form.index("trainer.steps")] == 5
    # a preset that no longer validates still loads, with its problems as notes
    (tmp_path / "presets" / "stale.yaml").write_text("name: stale\nagent: gone\nenv: {type: uit_env}\n")
    loaded, notes, _ = files.load(form, "stale")
    assert any("gone" in note for note in notes) and loaded[form.index("name")] == "stale"
    assert "memfactory train presets/x.yaml" == files.cli_command("x")
    assert files.download_file("saved_one", text).endswith("saved_one.yaml")


def test_download_files_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths = [files.download_file("p", f"name: p{i}\n") for i in range(205)]
    folders = list((tmp_path / "memfactory-ui").iterdir())
    assert len(folders) <= 201
    assert Path(paths[-1]).read_text() == "name: p204\n"
    assert files.download_file("../x", "name: q\n").endswith("/preset.yaml")  # a bad name never becomes a path


def test_assemble_plans_the_preview_and_reports_mistakes_in_place():
    """The Assemble tab's "Will it fit?" panel: the planner on the YAML preview, user mistakes as text."""
    text = (presets_dir() / "memagent_qwen3_4b.yaml").read_text(encoding="utf-8")
    verdict = files.plan_for_preview(text, 1, "80")
    assert "not fit" in verdict.lower() or "does not fit" in verdict.lower(), verdict
    assert "fsdp" in verdict.lower() or "lora" in verdict.lower()  # names a knob to turn
    assert "fits" in files.plan_for_preview(text, 1, "141").lower()
    assert "must be a number" in files.plan_for_preview(text, 1, "lots")
    assert "Assemble a valid preset first" in files.plan_for_preview("", 1, "")
    assert "Cannot plan" in files.plan_for_preview("trainer: [unclosed\nx: 1\n", 1, "")
