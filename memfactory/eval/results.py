"""An eval's output folder: ``samples.jsonl`` (one line per finished sample, the resume point) and
``eval.json`` (the settings every run into the folder must share)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memfactory.errors import MemFactoryError

SAMPLES_FILE = "samples.jsonl"
MANIFEST_FILE = "eval.json"


class ResultsStore:
    """``samples.jsonl``: one line per finished (row, set, sample), appended as batches finish."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / SAMPLES_FILE

    def records(self) -> list[dict[str, Any]]:
        """Every complete line; a line cut off by a crash is ignored (it is rerun)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and {"row", "set", "sample_id", "score"} <= set(record):
                out.append(record)
        return out

    def done(self) -> set[tuple[str, str, str]]:
        return {(r["row"], r["set"], r["sample_id"]) for r in self.records()}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        needs_newline = (
            self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        )
        with self.path.open("a", encoding="utf-8") as fh:
            if needs_newline:  # the previous run died mid-line; start clean
                fh.write("\n")
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()


def default_out_dir() -> Path:
    return Path("evals") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """A rerun into the same folder must sample the same way, or avg@k would mix settings."""
    path = folder / MANIFEST_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old and old.get("protocol") != manifest["protocol"]:
            made = f"--protocol {old['protocol']}" if old.get("protocol") else "no named protocol (an older eval)"
            raise MemFactoryError(
                f"{folder} holds an eval made with {made}, not --protocol {manifest['protocol']}: scores of "
                "different protocols must not share a table; resume it with the same protocol or choose another --out"
            )
        for key in ("k", "temperature", "top_p", "max_new_tokens", "metric"):
            if key in old and old[key] != manifest[key]:
                raise MemFactoryError(
                    f"{folder} holds an eval with {key}={old[key]!r}, not {manifest[key]!r}; "
                    "resume with the same settings or choose another --out"
                )
        manifest = {
            **old,
            **manifest,
            "rows": sorted(set(old.get("rows", [])) | set(manifest["rows"])),
            "sets": sorted(set(old.get("sets", [])) | set(manifest["sets"])),
        }
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
