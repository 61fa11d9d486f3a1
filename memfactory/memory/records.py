"""What a memory bank holds, and the row-level writes of one transaction.

The records a bank returns (``MemoryItem``, ``MemoryHit``, ``HistoryEntry``), its schema, the
mapping between rows and records, and ``RowWriter``: the inserts, updates and deletes (each with
its ``history`` row) that run inside one of the store's write transactions. The writer also notes
what the transaction did to the rows, which the embedding index needs to stay current: only rows
added (it extends its matrices) or anything else (it drops them).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlite_utils

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import Embedder, embedder_name

ITEM_COLUMNS = "id, scope, text, key, value, type, tags, created_at, updated_at"
UNSET: Any = object()  # "not given" for fields where None is a value (an UPDATE clearing ``key``)


class MemoryNotFound(MemFactoryError):
    """An UPDATE/DELETE/get named a memory id the bank does not hold."""


@dataclass
class MemoryItem:
    id: str
    text: str
    scope: str = "default"
    key: str | None = None
    value: str | None = None
    type: str = "fact"
    tags: list[str] = field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MemoryHit:
    item: MemoryItem
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "score": self.score}


@dataclass
class HistoryEntry:
    """One operation in a memory's life; ``old_value``/``new_value`` are the memory's text."""

    id: int
    memory_id: str
    op: str
    old_value: str | None
    new_value: str | None
    at: str
    actor: str | None
    scope: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def item_from_row(row: Sequence[Any]) -> MemoryItem:
    """A ``MemoryItem`` from a row selected as ``ITEM_COLUMNS``."""
    ident, scope, text, key, value, kind, tags, created, updated = row
    return MemoryItem(
        id=ident,
        scope=scope,
        text=text,
        key=key,
        value=value,
        type=kind,
        tags=json.loads(tags) if tags else [],
        created_at=created,
        updated_at=updated,
    )


def check_text(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise MemFactoryError(f"{where}: memory text must be a non-empty string, got {text!r}")
    return text


def check_scope(scope: Any, where: str) -> str:
    if not isinstance(scope, str) or not scope:
        raise MemFactoryError(f"{where}: scope must be a non-empty string, got {scope!r}")
    return scope


def new_row(
    ident: str | None,
    text: str,
    vector: np.ndarray,
    *,
    scope: str,
    key: str | None,
    value: str | None,
    type: str,
    tags: Iterable[str],
    at: str,
) -> dict[str, Any]:
    """A ``memories`` row (a new uuid unless ``ident`` is given), its embedding as float32 bytes."""
    return {
        "id": ident or uuid.uuid4().hex,
        "scope": scope,
        "text": text,
        "key": key,
        "value": value,
        "type": type,
        "tags": json.dumps([str(t) for t in tags]),
        "embedding": np.asarray(vector, dtype=np.float32).tobytes(),
        "created_at": at,
        "updated_at": at,
    }


BANK_TABLES = ("memories", "history", "meta")


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}


def has_schema(conn: sqlite3.Connection) -> bool:
    return set(BANK_TABLES) <= table_names(conn)


def create_schema(db: sqlite_utils.Database) -> None:
    """The bank's tables: ``memories`` (rows + embeddings), ``history`` (every operation), ``meta``."""
    db["memories"].create(
        {
            "id": str,
            "scope": str,
            "text": str,
            "key": str,
            "value": str,
            "type": str,
            "tags": str,
            "embedding": bytes,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"scope", "text", "type", "embedding"},
        if_not_exists=True,
    )
    db["memories"].create_index(["scope"], if_not_exists=True)
    db["history"].create(
        {
            "id": int,
            "memory_id": str,
            "scope": str,
            "op": str,
            "old_value": str,
            "new_value": str,
            "at": str,
            "actor": str,
        },
        pk="id",
        not_null={"memory_id", "op", "at"},
        if_not_exists=True,
    )
    db["history"].create_index(["memory_id"], if_not_exists=True)
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def check_embedder(meta: dict[str, str], embedder: Embedder, *, count: int, bank: str) -> None:
    """Refuse to open a bank that holds vectors of another embedder (an empty bank may switch)."""
    name = embedder_name(embedder)
    differs = "embedder" in meta and (meta["embedder"] != name or int(meta.get("dim", 0)) != int(embedder.dim))
    if differs and count > 0:
        raise MemFactoryError(
            f"memory bank {bank} holds embeddings from {meta['embedder']!r} ({meta.get('dim')} dims) "
            f"but was opened with {name!r} ({embedder.dim} dims); open it with "
            f"get_embedder({meta['embedder']!r}) or call reembed() to convert it"
        )


def record_embedder(db: sqlite_utils.Database, embedder: Embedder, bank: str) -> None:
    """Inside a write: note which vector space the stored embeddings live in."""
    name = embedder_name(embedder)
    meta = read_meta(db.conn)
    if meta.get("embedder") == name and meta.get("dim") == str(embedder.dim):
        return
    if "embedder" in meta and db.conn.execute("SELECT 1 FROM memories LIMIT 1").fetchone():
        raise MemFactoryError(
            f"memory bank {bank} holds embeddings from {meta['embedder']!r}; cannot add "
            f"{name!r} vectors to it (call reembed() to convert the bank)"
        )
    db["meta"].upsert_all([{"key": "embedder", "value": name}, {"key": "dim", "value": str(embedder.dim)}], pk="key")


class RowWriter:
    """The row writes of one open transaction, each with its history row.

    ``added`` collects ``(id, scope, embedding)`` of inserted rows; ``rewritten`` turns True on any
    other change (update, delete, reset, re-embedding), after which cached matrices cannot be
    extended and must be rebuilt.
    """

    def __init__(self, db: sqlite_utils.Database, where: str):
        self.db = db
        self.conn = db.conn
        self.where = where  # the bank, for error messages
        self.added: list[tuple[str, str, bytes]] = []
        self.rewritten = False

    def current(self, ident: str, where: str) -> MemoryItem:
        row = self.conn.execute(f"SELECT {ITEM_COLUMNS} FROM memories WHERE id = ?", (ident,)).fetchone()
        if row is None:
            raise MemoryNotFound(f"{where}: no memory with id {ident!r} in {self.where}")
        return item_from_row(row)

    def reject_existing(self, ids: list[str], what: str) -> None:
        if len(set(ids)) != len(ids):
            raise MemFactoryError(f"{what}: the same memory id appears twice in one batch")
        for ident in ids:
            if self.conn.execute("SELECT 1 FROM memories WHERE id = ?", (ident,)).fetchone():
                raise MemFactoryError(f"{what}: memory id {ident!r} already exists in {self.where}")

    def insert(self, rows: list[dict[str, Any]], actor: str | None) -> None:
        self.added.extend((r["id"], r["scope"], r["embedding"]) for r in rows)
        self.db["memories"].insert_all(rows, batch_size=500)
        self.db["history"].insert_all(
            (
                {
                    "memory_id": r["id"],
                    "scope": r["scope"],
                    "op": "ADD",
                    "old_value": None,
                    "new_value": r["text"],
                    "at": r["created_at"],
                    "actor": actor,
                }
                for r in rows
            ),
            batch_size=500,
        )

    def update(
        self,
        ident: str,
        vector: np.ndarray | None,
        *,
        text: str | None,
        key: Any,
        value: Any,
        type: str | None,
        tags: Iterable[str] | None,
        actor: str | None,
        where: str,
    ) -> MemoryItem:
        """Changes whichever fields are given (``key``/``value``: ``UNSET`` leaves them) and returns the result."""
        old = self.current(ident, where)
        self.rewritten = True
        changes: dict[str, Any] = {"updated_at": now()}
        if text is not None:
            changes["text"] = check_text(text, where)
            if vector is not None:
                changes["embedding"] = np.asarray(vector, dtype=np.float32).tobytes()
        if key is not UNSET:
            changes["key"] = key
        if value is not UNSET:
            changes["value"] = value
        if type is not None:
            changes["type"] = type
        if tags is not None:
            changes["tags"] = json.dumps([str(t) for t in tags])
        self.db["memories"].update(ident, changes)
        self.db["history"].insert(
            {
                "memory_id": ident,
                "scope": old.scope,
                "op": "UPDATE",
                "old_value": old.text,
                "new_value": changes.get("text", old.text),
                "at": changes["updated_at"],
                "actor": actor,
            }
        )
        return self.current(ident, where)

    def delete(self, ident: str, actor: str | None, where: str) -> MemoryItem:
        """Removes a memory (its history stays) and returns what it was."""
        old = self.current(ident, where)
        self.rewritten = True
        self.conn.execute("DELETE FROM memories WHERE id = ?", (ident,))
        self.db["history"].insert(
            {
                "memory_id": ident,
                "scope": old.scope,
                "op": "DELETE",
                "old_value": old.text,
                "new_value": None,
                "at": now(),
                "actor": actor,
            }
        )
        return old

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Any other statement (reset, re-embedding): the index rebuilds after it."""
        self.rewritten = True
        return self.conn.execute(sql, params)


__all__ = [
    "HistoryEntry",
    "MemoryHit",
    "MemoryItem",
    "MemoryNotFound",
    "RowWriter",
]
