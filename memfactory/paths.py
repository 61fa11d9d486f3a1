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


def is_file(path: str | os.PathLike[str]) -> bool:
    """``Path(path).is_file()``, but False (not an OSError) for a name the file system cannot take
    (too long, a NUL byte): such a path is not a file there, and every data finder asks this."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
