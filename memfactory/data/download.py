"""Fetch MemAgent's public data set from the Hugging Face hub (only when online).

``BytedTsinghua-SIA/hotpotqa`` (a dataset repo) holds ``eval_{N}.json`` (N = 50, 100, 200, ... docs;
the larger ones are hundreds of MB) and the verl training parquet files. By default only the small
eval sets and the parquet files are fetched; pass ``patterns`` for others (e.g. ``["eval_*.json"]``).
Offline (``HF_HUB_OFFLINE=1``) or unreachable hub: one-line ``MemFactoryError``, no traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from memfactory.errors import MemFactoryError

MEMAGENT_REPO = "BytedTsinghua-SIA/hotpotqa"
DEFAULT_PATTERNS = ["eval_50.json", "eval_100.json", "eval_200.json", "*.parquet"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_memagent(
    to_dir: str | Path, patterns: list[str] | None = None, repo_id: str = MEMAGENT_REPO
) -> list[Path]:
    """Download the matching files of MemAgent's data set into ``to_dir``; returns their paths."""
    to_dir = Path(to_dir)
    if _offline():
        raise MemFactoryError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set. Unset it on a machine with internet access, "
            f"or copy the files into {to_dir} by hand."
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise MemFactoryError("huggingface_hub is not installed; `pip install huggingface-hub`") from None
    try:
        snapshot_download(
            repo_id, repo_type="dataset", local_dir=str(to_dir), allow_patterns=patterns or DEFAULT_PATTERNS
        )
    except Exception as exc:  # noqa: BLE001  connection, DNS, 404, offline-mode errors all mean "could not fetch"
        kind = type(exc).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MemFactoryError(
            f"could not download {repo_id} into {to_dir} ({kind}: {first[:200]}); "
            "check the internet connection or HF_ENDPOINT"
        ) from None
    files = sorted(p for p in to_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".parquet"))
    if not files:
        raise MemFactoryError(f"{repo_id}: no files matched {patterns or DEFAULT_PATTERNS}")
    return files
