"""Where MemFactory keeps caches (built models) and where user files live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$MEMFACTORY_CACHE`` or ``~/.cache/memfactory``, created on demand."""
    root = Path(os.environ.get("MEMFACTORY_CACHE") or Path.home() / ".cache" / "memfactory")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root() -> Path:
    """The repository checkout (presets/, assets/ live here)."""
    return Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    return project_root() / "assets"


def presets_dir() -> Path:
    return project_root() / "presets"
