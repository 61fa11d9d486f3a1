"""The preset the Assemble form describes, as files and text: its name, the CLI line, the download,
saving to and loading from ``presets/``, and the memory planner on its YAML. No Gradio here."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from memfactory.config import load_preset, save_preset
from memfactory.errors import ConfigError, MemFactoryError
from memfactory.planner.plan import plan_markdown
from webui import workspace
from webui.assemble.form import PresetForm, check, to_values


def file_stem(save_name: str, data: dict[str, Any]) -> str:
    return (save_name or "").strip().removesuffix(".yaml") or str(data.get("name") or "preset")


def cli_command(stem: str) -> str:
    return f"memfactory train presets/{stem}.yaml"


def download_file(stem: str, text: str) -> str:
    """The YAML in a temp file named after the preset (content-addressed, so sessions never clash)."""
    try:
        stem = workspace.check_name(stem)
    except MemFactoryError:
        stem = "preset"
    root = Path(tempfile.gettempdir()) / "memfactory-ui"
    folder = root / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not folder.exists():
        _prune(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _prune(root: Path, keep: int = 200) -> None:
    """Every edit of a valid preset makes one small file; keep only the newest ``keep`` folders."""
    try:
        folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for folder in folders[:-keep] if len(folders) > keep else []:
        shutil.rmtree(folder, ignore_errors=True)


def save(form: PresetForm, values: list[Any], save_name: str, overwrite: bool) -> tuple[Path, str]:
    """Validate and write ``presets/<name>.yaml``; raises MemFactoryError with a readable reason."""
    data, preset, problems = check(form, values)
    if preset is None:
        raise ConfigError("<assemble>", problems)
    path = workspace.preset_path(file_stem(save_name, data))
    if path.exists() and not overwrite:
        raise MemFactoryError(f"{path.name} already exists; tick 'Overwrite' to replace it")
    save_preset(preset, path)
    return path, preset.to_yaml()


def load(form: PresetForm, name: str) -> tuple[list[Any], list[str], Path]:
    """Widget values for a saved preset, with notes (validation problems, fields the form cannot show)."""
    path = workspace.find_preset(name)
    values, notes = load_file(form, path)
    return values, notes, path


def load_file(form: PresetForm, path: Path) -> tuple[list[Any], list[str]]:
    """Widget values for the preset file ``path`` (the caller has checked where it is), with notes."""
    notes: list[str] = []
    try:
        data = load_preset(path).model_dump(mode="json", exclude_none=True)
    except ConfigError as exc:  # still show what it holds, so it can be fixed in the form
        notes += [f"{p or '(top level)'}: {m}" for p, m in exc.problems]
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise
    values, more = to_values(form, data)
    return values, notes + more


def plan_for_preview(yaml_text: str, gpus: Any, gpu_mem: str) -> str:
    """The memory planner on the preset being assembled (its YAML preview, never a path from the page)."""
    if not yaml_text or "\n" not in yaml_text.strip():
        return "Assemble a valid preset first: the plan is made from its YAML preview."
    try:
        count = int(gpus or 1)
        mem = float(gpu_mem) if str(gpu_mem or "").strip() else None
    except (TypeError, ValueError):
        return f"GiB per device must be a number (got {gpu_mem!r}); leave it empty to use the detected memory."
    return plan_markdown(yaml_text, gpus=count, gpu_mem_gib=mem)
