"""The Chat tab's memory banks on disk (no Gradio): named SQLite files in ``<workspace>/banks/``.

A bank is opened by name (created when new), listed, copied out for a download and copied in from
an upload. A file picked by the user is read before it is used: one that is not a memory bank is
refused and left as it was (:meth:`memfactory.memory.store.MemoryStore.open_existing`). Writes wait
at most :data:`WRITE_TIMEOUT_S` for another writer (a running trainer, another chat), then the turn
fails with a message saying the bank is locked and nothing was written.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import get_embedder
from memfactory.memory.store import MemoryStore
from webui import workspace

DEFAULT_BANK = "chat"
SUFFIX = ".db"
WRITE_TIMEOUT_S = 5.0  # a chat should say "locked" in seconds, not wait like a batch job


def bank_path(name: str) -> Path:
    """``<workspace>/banks/<name>.db``; the name is a bare file stem (checked, confined to the folder)."""
    stem = workspace.check_name((name or "").strip().removesuffix(SUFFIX), "bank name")
    return workspace.confine(workspace.banks_dir(), stem + SUFFIX)


def list_banks() -> list[str]:
    """Names of the banks in the workspace, sorted."""
    return sorted(p.stem for p in workspace.banks_dir().glob("*" + SUFFIX)
                  if p.is_file() and workspace.NAME_RE.fullmatch(p.stem))


def open_bank(name: str, embedder: str) -> MemoryStore:
    """The bank called ``name`` with the agent's ``embedder``: an existing file must be a bank built
    with that embedder (each refusal names the file and the reason); a new name creates an empty one."""
    path = bank_path(name)
    if path.exists():
        return MemoryStore.open_existing(path, get_embedder(embedder), timeout=WRITE_TIMEOUT_S)
    return MemoryStore(path, get_embedder(embedder), timeout=WRITE_TIMEOUT_S)


def import_bank(upload: str | Path, name: str | None = None) -> str:
    """Copy an uploaded bank into the workspace under ``name`` (default: the file's stem); returns the
    name. The upload must be a memory bank, and an existing bank of that name is never overwritten."""
    source = Path(upload)
    target = bank_path(name or source.stem)
    if target.exists():
        raise MemFactoryError(f"a bank called {target.stem!r} already exists in {target.parent}; rename the file "
                              "you upload, or open that bank")
    with MemoryStore.open_existing(source, timeout=WRITE_TIMEOUT_S) as bank:
        bank.snapshot(target).close()  # SQLite's backup API: a consistent copy, write-ahead log included
    return target.stem


def download_copy(bank: MemoryStore, folder: Path | None = None) -> Path:
    """A consistent single-file copy of ``bank`` to download (a fresh temporary folder by default); the
    open bank keeps its write-ahead log, so its own file may lag behind what it holds."""
    folder = folder or Path(tempfile.gettempdir()) / "memfactory-ui" / f"bank-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(bank.path).name
    target.unlink(missing_ok=True)
    bank.snapshot(target).close()
    return target
