"""Where the web UI reads and writes user files, and the checks that keep it there.

The UI writes presets and starts runs; a name typed in a browser must never reach outside the
workspace (``../../etc/passwd``, absolute paths, symlinks out). ``$MEMFACTORY_WORKSPACE`` moves
the whole workspace (tests point it at a temporary folder); by default it is the project checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from memfactory.errors import MemFactoryError
from memfactory.paths import presets_dir as shipped_presets_dir
from memfactory.paths import project_root
from memfactory.tracking.runs import RunsDB, open_db

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
ENV_VAR = "MEMFACTORY_WORKSPACE"


class WorkspaceError(MemFactoryError):
    """A file name from the UI is malformed or points outside the workspace."""


def workspace_root() -> Path:
    """``$MEMFACTORY_WORKSPACE`` if set, else the project checkout."""
    return Path(os.environ.get(ENV_VAR) or project_root()).resolve()


def presets_dir() -> Path:
    path = workspace_root() / "presets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = workspace_root() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def banks_dir() -> Path:
    """Where the Chat tab keeps its named memory banks (SQLite files)."""
    path = workspace_root() / "banks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_db() -> Path:
    return runs_dir() / "memfactory.db"


def open_runs_db() -> RunsDB:
    """The workspace's runs database (one shared handle per file: memfactory.tracking.runs.open_db)."""
    return open_db(runs_db())


def check_name(name: str, what: str = "name") -> str:
    """A bare file stem: letters, digits, ``_ . -``; not ``.``/``..``; no separators."""
    name = (name or "").strip()
    if not name:
        raise WorkspaceError(f"{what} is empty")
    if not NAME_RE.fullmatch(name) or set(name) == {"."}:
        raise WorkspaceError(f"{what} {name!r} may only hold letters, digits, '_', '.', '-'")
    return name


def confine(base: Path, relative: str | Path) -> Path:
    """``base/relative`` resolved (symlinks too), refused when it lands outside ``base``."""
    base = Path(base).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise WorkspaceError(f"{relative} is outside {base}")
    return target


def preset_path(name: str) -> Path:
    """Where a preset called ``name`` is saved: ``<workspace>/presets/<name>.yaml``."""
    stem = check_name(name.removesuffix(".yaml").removesuffix(".yml") if name else name, "preset name")
    return confine(presets_dir(), f"{stem}.yaml")


def list_presets() -> list[str]:
    """Names of saved presets: the workspace's, then shipped ones not shadowed by them."""
    names: list[str] = []
    for folder in _preset_folders():
        for path in sorted(folder.glob("*.y*ml")):
            if path.suffix in (".yaml", ".yml") and NAME_RE.fullmatch(path.stem) and path.stem not in names:
                names.append(path.stem)
    return names


def find_preset(name: str) -> Path:
    """The file of a listed preset (workspace first, then shipped), confined to its folder."""
    stem = check_name(name, "preset name")
    for folder in _preset_folders():
        for suffix in (".yaml", ".yml"):
            path = confine(folder, stem + suffix)
            if path.is_file():
                return path
    raise WorkspaceError(f"no preset called {stem!r} in {presets_dir()}")


def _preset_folders() -> list[Path]:
    folders = [presets_dir()]
    shipped = shipped_presets_dir().resolve()
    if shipped.is_dir() and shipped not in folders:
        folders.append(shipped)
    return folders
