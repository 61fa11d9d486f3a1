"""Path confinement: names typed in the browser never leave the workspace."""

from __future__ import annotations

import os

import pytest

from webui import workspace
from webui.workspace import WorkspaceError


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["", " ", "..", ".", "../x", "a/b", "/etc/passwd", "a b", "x\\y", "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(WorkspaceError):
        workspace.check_name(name)


def test_good_name_and_preset_path_inside_workspace(ws):
    assert workspace.workspace_root() == ws.resolve()
    path = workspace.preset_path("my-preset_1.0")
    assert path == ws.resolve() / "presets" / "my-preset_1.0.yaml"
    assert workspace.preset_path("x.yaml").name == "x.yaml"


def test_confine_refuses_symlink_escape(ws, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    os.symlink(outside, workspace.presets_dir() / "link")
    with pytest.raises(WorkspaceError):
        workspace.confine(ws / "presets", "link/evil.yaml")
    with pytest.raises(WorkspaceError):
        workspace.confine(ws / "presets", "../runs/x")
    assert workspace.confine(ws / "presets", "ok.yaml").parent == (ws / "presets").resolve()


def test_list_and_find_presets(ws):
    folder = workspace.presets_dir()
    (folder / "b.yaml").write_text("name: b\n")
    (folder / "a.yml").write_text("name: a\n")
    (folder / "bad name.yaml").write_text("name: c\n")
    (folder / "notes.txt").write_text("x")
    names = workspace.list_presets()
    assert names[:2] == ["a", "b"] and "bad name" not in names and "notes" not in names
    assert workspace.find_preset("a") == (folder / "a.yml").resolve()
    with pytest.raises(WorkspaceError):
        workspace.find_preset("missing")
    with pytest.raises(WorkspaceError):
        workspace.find_preset("../b")


def test_the_tabs_share_one_runs_database_handle_per_workspace(ws, tmp_path_factory, monkeypatch):
    db = workspace.open_runs_db()
    assert db.path == ws.resolve() / "runs" / "memfactory.db" and db.path.is_file()
    assert workspace.open_runs_db() is db  # the Train and Runs tabs poll through one handle
    other = tmp_path_factory.mktemp("other")
    monkeypatch.setenv(workspace.ENV_VAR, str(other))
    assert workspace.open_runs_db().path == other.resolve() / "runs" / "memfactory.db"
