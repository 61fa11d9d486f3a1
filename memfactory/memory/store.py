"""The long-term memory bank: SQLite rows with cached embeddings and a history of every operation.

In the spirit of mem0: memories are short texts in a scope ("user:alice", "session:3"), searched by
cosine similarity of real sentence embeddings (see embed.py), changed by ADD / UPDATE / DELETE
operations that are recorded in a ``history`` table so a memory's life can be replayed.

Why the details matter for training:
- ``apply`` runs a whole batch of operations (what a memory-manager policy emits for one turn) in a
  single SQLite transaction: one bad operation leaves the bank exactly as it was.
- ``snapshot`` / ``restore`` branch a bank with SQLite's backup API so each GRPO rollout works on its
  own copy; the in-memory embedding matrices are shared with the copy, so nothing is recomputed.
- Embeddings are computed in batches on write and stored as float32 BLOBs; search keeps a per-scope
  matrix in memory (rebuilt only after a write by this or another connection, detected through
  ``PRAGMA data_version``) and ranks with one matrix-vector product plus ``argpartition``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import Embedder, get_embedder, l2_normalise
from memfactory.text import is_utf8_text

OPS = ("ADD", "UPDATE", "DELETE", "NONE")
_OP_ALIASES = {"NOOP": "NONE", "NO_OP": "NONE", "NOTHING": "NONE", "KEEP": "NONE"}
_ITEM_COLUMNS = "id, scope, text, key, value, type, tags, created_at, updated_at"
_UNSET: Any = object()


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


@dataclass
class Operation:
    """One memory operation as a manager policy emits it.

    ADD needs ``text`` (``id`` optional: a new one is generated); UPDATE needs ``id`` and changes
    whichever of text/key/value/type/tags is given; DELETE needs ``id``; NONE does nothing.
    """

    op: str
    id: str | None = None
    text: str | None = None
    scope: str | None = None
    key: str | None = None
    value: str | None = None
    type: str | None = None
    tags: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.op = normalise_op(self.op)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        """Accepts our field names and mem0's ({"event": "UPDATE", "id": ..., "text": ...})."""
        if not isinstance(data, dict):
            raise MemFactoryError(f"a memory operation must be a JSON object, got {type(data).__name__}")
        op = data.get("op", data.get("event", data.get("operation")))
        if op is None:
            raise MemFactoryError(f"memory operation {data!r} has no 'op' (or 'event') field")
        ident = data.get("id", data.get("memory_id"))
        text = data.get("text", data.get("memory"))
        tags = data.get("tags")
        return cls(
            op=str(op),
            id=None if ident is None else str(ident),
            text=None if text is None else str(text),
            scope=data.get("scope"),
            key=data.get("key"),
            value=None if data.get("value") is None else str(data.get("value")),
            type=data.get("type"),
            tags=[str(t) for t in tags] if isinstance(tags, (list, tuple)) else tags,  # else refused by apply
        )


@dataclass
class ApplyResult:
    ok: bool = True
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: int = 0
    error: str | None = None
    failed_index: int | None = None

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.updated) + len(self.deleted)


def normalise_op(op: str) -> str:
    name = str(op).strip().upper()
    name = _OP_ALIASES.get(name, name)
    if name not in OPS:
        raise MemFactoryError(f"unknown memory operation {op!r}; expected one of {', '.join(OPS)}")
    return name



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _item(row: Sequence[Any]) -> MemoryItem:
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


@dataclass
class _Matrix:
    version: tuple[int, int]
    ids: list[str]
    # (dim, n) float32, one unit vector per column, C-contiguous: ``q @ vectors_t`` streams the memory
    # once and measured ~2.5x faster than ``vectors @ q`` on (n, dim) at 100k rows, one thread.
    # Never modified in place, so snapshots share it.
    vectors_t: np.ndarray


class MemoryStore:
    """A memory bank in one SQLite file (or ``":memory:"``).

    ``embedder=None`` uses the embedder the bank was built with (recorded in its ``meta`` table), or
    the bundled all-MiniLM-L6-v2 for a new bank; it is loaded only when something needs encoding.
    ``timeout`` is how long a write waits for another writer before giving up with MemFactoryError.
    """

    def __init__(self, path: str | Path, embedder: Embedder | None = None, *, timeout: float = 10.0):
        self.path = str(path) if str(path) == ":memory:" else str(Path(path).expanduser())
        self.timeout = float(timeout)
        self._embedder = embedder
        self._lock = threading.RLock()
        self._generation = 0  # bumped on this connection's writes (data_version ignores them)
        self._matrices: dict[str | None, _Matrix] = {}
        # Rows added by the open write transaction, so cached matrices can be extended instead of
        # rebuilt; None means the write changed something else and the caches must be dropped.
        self._appended: list[tuple[str, str, bytes]] | None = None
        self._query_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._conn = self._connect()
        try:
            self.db = sqlite_utils.Database(self._conn)
            self._init_schema()
            if embedder is not None:
                self._check_embedder(embedder)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ connection and errors
    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            target = Path(self.path)
            if target.is_dir():
                raise MemFactoryError(f"memory bank {self.path} is a directory, not a SQLite file")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemFactoryError(f"cannot create the folder for memory bank {self.path}: {exc}") from exc
        with self._errors("open the bank"):
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                if self.path != ":memory:":
                    mode = self._switch_to_wal(conn)
                    if str(mode).lower() != "wal":
                        raise sqlite3.OperationalError(f"could not switch to WAL journal mode (got {mode})")
                    conn.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                conn.close()
                raise
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=wal``, retried until the timeout: SQLite answers "locked" at once,
        without the busy timeout, when two processes switch a fresh file to WAL together."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=wal").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SQLite failures into one readable MemFactoryError naming the bank and the action."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" in message or "busy" in message:
                raise MemFactoryError(
                    f"memory bank {self.path} is locked by another connection; gave up after waiting "
                    f"{self.timeout:g}s to {action}. Nothing was written. Close the other writer or "
                    f"raise MemoryStore(timeout=...)."
                ) from exc
            raise MemFactoryError(f"memory bank {self.path}: cannot {action}: {self._disk_hint(message)}") from exc
        except sqlite3.IntegrityError as exc:
            raise MemFactoryError(f"memory bank {self.path}: cannot {action}: {exc}; nothing was written") from exc
        except sqlite3.DatabaseError as exc:
            raise MemFactoryError(
                f"memory bank {self.path} is unreadable ({exc}) while trying to {action}; "
                "is it a SQLite file written by MemFactory?"
            ) from exc

    def _disk_hint(self, message: str) -> str:
        """SQLite's words for a full or read-only disk, said plainly (a failed write rolled back)."""
        if "disk is full" in message:
            return f"no space left on device ({message}); nothing was written, the bank is as it was"
        folder = Path(self.path).parent if self.path != ":memory:" else None
        read_only = "readonly" in message or "read-only" in message
        if folder is not None and not read_only and "unable to open" in message:
            try:
                read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
            except OSError:
                pass
        if read_only:
            return f"read-only file system or file ({message}); nothing was written, the bank is as it was"
        return message

    @contextmanager
    def _write(self, action: str) -> Iterator[None]:
        """One IMMEDIATE transaction: everything inside commits together or not at all."""
        with self._lock, self._errors(action):
            self._conn.execute("BEGIN IMMEDIATE")
            before = self._version()
            self._appended = None
            committed = False
            try:
                yield
                self._conn.execute("COMMIT")
                committed = True
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._generation += 1
                appended, self._appended = self._appended, None
                if committed and appended is not None:
                    self._extend_matrices(before, appended)
                elif committed:
                    self._matrices = {}

    def _extend_matrices(self, before: tuple[int, int], appended: list[tuple[str, str, bytes]]) -> None:
        """After a write that only added rows: append them to the matrices that were current before it."""
        after = self._version()
        extended: dict[str | None, _Matrix] = {}
        for scope, m in self._matrices.items():
            if m.version != before:
                continue
            new = [(ident, blob) for ident, row_scope, blob in appended if scope is None or row_scope == scope]
            if not new:
                extended[scope] = _Matrix(after, m.ids, m.vectors_t)
                continue
            extra = np.frombuffer(b"".join(blob for _, blob in new), dtype=np.float32).reshape(len(new), -1)
            if extra.shape[1] != m.vectors_t.shape[0]:
                continue
            # A new array (never in place): snapshots may share the old one.
            vectors_t = np.concatenate([m.vectors_t, extra.T], axis=1)
            extended[scope] = _Matrix(after, m.ids + [ident for ident, _ in new], vectors_t)
        self._matrices = extended

    def _read(self, sql: str, params: Sequence[Any] = (), action: str = "read") -> list[tuple]:
        with self._lock, self._errors(action):
            return self._conn.execute(sql, params).fetchall()

    def _init_schema(self) -> None:
        tables = {
            r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type = 'table'", action="read its schema")
        }
        if {"memories", "history", "meta"} <= tables:
            return  # an existing bank opens without taking the write lock
        with self._write("create its tables"):
            self.db["memories"].create(
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
            self.db["memories"].create_index(["scope"], if_not_exists=True)
            self.db["history"].create(
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
            self.db["history"].create_index(["memory_id"], if_not_exists=True)
            self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MemoryStore:  # noqa: PYI034 - py310 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryStore({self.path!r})"

    # ------------------------------------------------------------------ embeddings
    def _meta(self) -> dict[str, str]:
        return dict(self._read("SELECT key, value FROM meta", action="read its metadata"))

    def _check_embedder(self, embedder: Embedder) -> None:
        meta = self._meta()
        name = getattr(embedder, "name", type(embedder).__name__)
        differs = "embedder" in meta and (meta["embedder"] != name or int(meta.get("dim", 0)) != int(embedder.dim))
        if differs and self.count() > 0:
            raise MemFactoryError(
                f"memory bank {self.path} holds embeddings from {meta['embedder']!r} ({meta.get('dim')} dims) "
                f"but was opened with {name!r} ({embedder.dim} dims); open it with "
                f"get_embedder({meta['embedder']!r}) or call reembed() to convert it"
            )

    @property
    def embedder(self) -> Embedder:
        """The bank's embedder, loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = get_embedder(self._meta().get("embedder", "minilm"))
        return self._embedder

    def _record_embedder(self) -> None:
        """Inside a write: note which vector space the stored embeddings live in."""
        emb = self.embedder
        name = getattr(emb, "name", type(emb).__name__)
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("embedder") == name and meta.get("dim") == str(emb.dim):
            return
        if "embedder" in meta and self._conn.execute("SELECT 1 FROM memories LIMIT 1").fetchone():
            raise MemFactoryError(
                f"memory bank {self.path} holds embeddings from {meta['embedder']!r}; cannot add "
                f"{name!r} vectors to it (call reembed() to convert the bank)"
            )
        self.db["meta"].upsert_all(
            [{"key": "embedder", "value": name}, {"key": "dim", "value": str(emb.dim)}], pk="key"
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeds texts in one batch (duplicates encoded once) as unit float32 rows."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        vectors = l2_normalise(self.embedder.encode(unique))
        if vectors.shape != (len(unique), self.embedder.dim):
            raise MemFactoryError(
                f"embedder {getattr(self.embedder, 'name', '?')} returned shape {vectors.shape}, "
                f"expected ({len(unique)}, {self.embedder.dim})"
            )
        if len(unique) == len(texts):
            return vectors
        index = {t: i for i, t in enumerate(unique)}
        return vectors[[index[t] for t in texts]]

    def _query_vector(self, query: str) -> np.ndarray:
        key = (getattr(self.embedder, "name", ""), query)
        with self._lock:
            vec = self._query_cache.get(key)
            if vec is not None:
                self._query_cache.move_to_end(key)
                return vec
        vec = self.encode([query])[0]
        with self._lock:
            self._query_cache[key] = vec
            if len(self._query_cache) > 4096:
                self._query_cache.popitem(last=False)
        return vec

    # ------------------------------------------------------------------ writes
    def _insert(self, rows: list[dict[str, Any]], actor: str | None) -> None:
        if self._appended is not None:
            self._appended.extend((r["id"], r["scope"], r["embedding"]) for r in rows)
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

    @staticmethod
    def _check_text(text: Any, where: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise MemFactoryError(f"{where}: memory text must be a non-empty string, got {text!r}")
        return text

    @staticmethod
    def _check_scope(scope: Any, where: str) -> str:
        if not isinstance(scope, str) or not scope:
            raise MemFactoryError(f"{where}: scope must be a non-empty string, got {scope!r}")
        return scope

    def _row(
        self,
        ident: str | None,
        text: str,
        vector: np.ndarray,
        *,
        scope: str,
        key: str | None,
        value: str | None,
        type: str,
        tags: Iterable[str],
        now: str,
    ) -> dict[str, Any]:
        return {
            "id": ident or uuid.uuid4().hex,
            "scope": scope,
            "text": text,
            "key": key,
            "value": value,
            "type": type,
            "tags": json.dumps([str(t) for t in tags]),
            "embedding": np.asarray(vector, dtype=np.float32).tobytes(),
            "created_at": now,
            "updated_at": now,
        }

    def add(
        self,
        text: str,
        *,
        scope: str = "default",
        key: str | None = None,
        value: str | None = None,
        type: str = "fact",
        tags: Iterable[str] = (),
        actor: str | None = None,
        id: str | None = None,
    ) -> str:
        """Stores one memory and returns its id (a new uuid unless ``id`` is given)."""
        return self.add_many(
            [text],
            scope=scope,
            key=key,
            value=value,
            type=type,
            tags=tags,
            actor=actor,
            ids=None if id is None else [id],
        )[0]

    def add_many(
        self,
        texts: Sequence[str],
        *,
        scope: str = "default",
        key: str | None = None,
        value: str | None = None,
        type: str = "fact",
        tags: Iterable[str] = (),
        actor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Stores many memories with one embedding batch and one transaction."""
        texts = [self._check_text(t, f"add to {self.path} (text {i})") for i, t in enumerate(texts)]
        self._check_scope(scope, f"add to {self.path}")
        if ids is not None and len(ids) != len(texts):
            raise MemFactoryError(f"add_many: {len(ids)} ids for {len(texts)} texts")
        tags = list(tags)
        vectors = self.encode(texts)
        now = _now()
        rows = [
            self._row(
                None if ids is None else ids[i],
                t,
                vectors[i],
                scope=scope,
                key=key,
                value=value,
                type=type,
                tags=tags,
                now=now,
            )
            for i, t in enumerate(texts)
        ]
        with self._write(f"add {len(rows)} memories"):
            self._record_embedder()
            self._appended = []
            if ids is not None:
                self._reject_existing([r["id"] for r in rows], "add")
            self._insert(rows, actor)
        return [r["id"] for r in rows]

    def _reject_existing(self, ids: list[str], what: str) -> None:
        if len(set(ids)) != len(ids):
            raise MemFactoryError(f"{what}: the same memory id appears twice in one batch")
        for ident in ids:
            if self._conn.execute("SELECT 1 FROM memories WHERE id = ?", (ident,)).fetchone():
                raise MemFactoryError(f"{what}: memory id {ident!r} already exists in {self.path}")

    def _current(self, ident: str, where: str) -> MemoryItem:
        row = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM memories WHERE id = ?", (ident,)).fetchone()
        if row is None:
            raise MemoryNotFound(f"{where}: no memory with id {ident!r} in {self.path}")
        return _item(row)

    def _update_row(
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
        old = self._current(ident, where)
        self._appended = None
        changes: dict[str, Any] = {"updated_at": _now()}
        if text is not None:
            changes["text"] = self._check_text(text, where)
            if vector is not None:
                changes["embedding"] = np.asarray(vector, dtype=np.float32).tobytes()
        if key is not _UNSET:
            changes["key"] = key
        if value is not _UNSET:
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
        return self._current(ident, where)

    def update(
        self,
        id: str,
        text: str | None = None,
        *,
        key: Any = _UNSET,
        value: Any = _UNSET,
        type: str | None = None,
        tags: Iterable[str] | None = None,
        actor: str | None = None,
    ) -> MemoryItem:
        """Changes a memory (re-embedding only when the text changes) and returns the new version."""
        where = f"update {id!r}"
        vector = None
        if text is not None:
            self._check_text(text, where)
            vector = self.encode([text])[0]
        with self._write(where):
            if vector is not None:
                self._record_embedder()
            return self._update_row(
                id,
                vector,
                text=text,
                key=key,
                value=value,
                type=type,
                tags=None if tags is None else list(tags),
                actor=actor,
                where=where,
            )

    def _delete_row(self, ident: str, actor: str | None, where: str) -> MemoryItem:
        old = self._current(ident, where)
        self._appended = None
        self._conn.execute("DELETE FROM memories WHERE id = ?", (ident,))
        self.db["history"].insert(
            {
                "memory_id": ident,
                "scope": old.scope,
                "op": "DELETE",
                "old_value": old.text,
                "new_value": None,
                "at": _now(),
                "actor": actor,
            }
        )
        return old

    def delete(self, id: str, actor: str | None = None) -> MemoryItem:
        """Removes a memory (its history stays) and returns what it was."""
        where = f"delete {id!r}"
        with self._write(where):
            return self._delete_row(id, actor, where)

    def reset(self, scope: str | None = None) -> int:
        """Empties one scope (or the whole bank), history included: a clean slate, e.g. per episode."""
        with self._write("reset" if scope is None else f"reset scope {scope!r}"):
            if scope is None:
                count = self._conn.execute("DELETE FROM memories").rowcount
                self._conn.execute("DELETE FROM history")
            else:
                count = self._conn.execute("DELETE FROM memories WHERE scope = ?", (scope,)).rowcount
                self._conn.execute("DELETE FROM history WHERE scope = ?", (scope,))
        return count

    def apply(
        self,
        ops: Sequence[Operation | dict[str, Any]],
        *,
        actor: str | None = None,
        scope: str = "default",
        raise_on_error: bool = True,
    ) -> ApplyResult:
        """Applies a batch of ADD/UPDATE/DELETE/NONE operations in one transaction.

        Any invalid operation (unknown op, unknown id, empty text) rolls back the whole batch: with
        ``raise_on_error`` a MemFactoryError naming the operation's index is raised, otherwise the
        result has ``ok=False``, ``error`` and ``failed_index`` and the bank is unchanged.
        ``scope`` is the default for ADDs that name none.
        """
        result = ApplyResult()
        index: int | None = 0
        try:
            parsed: list[Operation] = []
            for index, op in enumerate(ops):
                parsed.append(op if isinstance(op, Operation) else Operation.from_dict(op))
                self._validate(parsed[-1], index)
            index = 0
            texts = [o.text for o in parsed if o.op in ("ADD", "UPDATE") and o.text is not None]
            vectors = self.encode(texts)
            with self._write(f"apply {len(parsed)} memory operations"):
                if texts:
                    self._record_embedder()
                self._appended = []
                row = 0
                now = _now()
                for index, o in enumerate(parsed):
                    where = f"operation {index} ({o.op})"
                    if o.op == "NONE":
                        result.skipped += 1
                    elif o.op == "ADD":
                        new = self._row(
                            o.id,
                            o.text,
                            vectors[row],
                            scope=o.scope or scope,
                            key=o.key,
                            value=o.value,
                            type=o.type or "fact",
                            tags=o.tags or (),
                            now=now,
                        )
                        row += 1
                        if o.id is not None:
                            self._reject_existing([o.id], where)
                        self._insert([new], actor)
                        result.added.append(new["id"])
                    elif o.op == "UPDATE":
                        vector = None
                        if o.text is not None:
                            vector = vectors[row]
                            row += 1
                        self._update_row(
                            o.id,
                            vector,
                            text=o.text,
                            key=_UNSET if o.key is None else o.key,
                            value=_UNSET if o.value is None else o.value,
                            type=o.type,
                            tags=o.tags,
                            actor=actor,
                            where=where,
                        )
                        result.updated.append(o.id)
                    else:
                        self._delete_row(o.id, actor, where)
                        result.deleted.append(o.id)
                index = None  # a failure from here on (the commit: disk full, lock) is no one operation's
        except MemFactoryError as exc:
            if raise_on_error:
                raise
            return ApplyResult(ok=False, error=str(exc), failed_index=index)
        return result

    def _validate(self, o: Operation, index: int) -> None:
        where = f"operation {index} ({o.op})"
        if o.op in ("UPDATE", "DELETE") and not o.id:
            raise MemFactoryError(f"{where}: needs the id of an existing memory")
        if o.op == "ADD":
            self._check_text(o.text, where)
        if o.op == "UPDATE" and o.text is not None:
            self._check_text(o.text, where)
        if o.scope is not None:
            self._check_scope(o.scope, where)
        # A dict from a model (Operation.from_dict) may carry anything: refuse here, not in SQLite.
        for name in ("id", "text", "scope", "key", "value", "type"):
            value = getattr(o, name)
            if value is not None and not (isinstance(value, str) and is_utf8_text(value)):
                raise MemFactoryError(f"{where}: {name} must be valid text, got {value!r:.80}")
        if o.tags is not None and not (
            isinstance(o.tags, (list, tuple)) and all(isinstance(t, str) and is_utf8_text(t) for t in o.tags)
        ):
            raise MemFactoryError(f"{where}: tags must be a list of strings, got {o.tags!r:.80}")

    def reembed(self, batch_size: int = 512) -> int:
        """Recomputes every stored embedding with the current embedder (to switch models)."""
        rows = self._read("SELECT id, text FROM memories ORDER BY rowid", action="read memories to re-embed")
        vectors = [self.encode([t for _, t in rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)]
        with self._write("re-embed the bank"):
            self._conn.execute("DELETE FROM meta WHERE key IN ('embedder', 'dim')")
            self._record_embedder()
            flat = np.concatenate(vectors) if vectors else np.zeros((0, self.embedder.dim), np.float32)
            self._conn.executemany(
                "UPDATE memories SET embedding = ? WHERE id = ?",
                [(flat[i].tobytes(), ident) for i, (ident, _) in enumerate(rows)],
            )
        return len(rows)

    # ------------------------------------------------------------------ reads
    def get(self, id: str) -> MemoryItem | None:
        rows = self._read(f"SELECT {_ITEM_COLUMNS} FROM memories WHERE id = ?", (id,), f"get {id!r}")
        return _item(rows[0]) if rows else None

    def all(self, scope: str | None = None, *, type: str | None = None) -> list[MemoryItem]:
        """Memories in insertion order, optionally of one scope and/or type."""
        where, params = [], []
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        if type is not None:
            where.append("type = ?")
            params.append(type)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_ITEM_COLUMNS} FROM memories{clause} ORDER BY rowid"
        return [_item(r) for r in self._read(sql, params, "list memories")]

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return self._read("SELECT count(*) FROM memories", action="count memories")[0][0]
        return self._read("SELECT count(*) FROM memories WHERE scope = ?", (scope,), "count memories")[0][0]

    def __len__(self) -> int:
        return self.count()

    def scopes(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT scope FROM memories ORDER BY scope", action="list scopes")]

    def history(self, id: str | None = None, *, scope: str | None = None) -> list[HistoryEntry]:
        """Operations in the order they happened: one memory's life, a scope's, or the whole bank's."""
        sql = "SELECT id, memory_id, op, old_value, new_value, at, actor, scope FROM history"
        params: list[Any] = []
        if id is not None:
            sql += " WHERE memory_id = ?"
            params.append(id)
        elif scope is not None:
            sql += " WHERE scope = ?"
            params.append(scope)
        return [HistoryEntry(*r) for r in self._read(sql + " ORDER BY id", params, "read history")]

    def _version(self) -> tuple[int, int]:
        return (self._conn.execute("PRAGMA data_version").fetchone()[0], self._generation)

    def _matrix(self, scope: str | None) -> _Matrix:
        """The cached (ids, vectors) of a scope, rebuilt if any connection wrote since it was built."""
        with self._lock, self._errors("load embeddings"):
            version = self._version()
            cached = self._matrices.get(scope)
            if cached is not None and cached.version == version:
                return cached
            if scope is None:
                rows = self._conn.execute("SELECT id, embedding FROM memories ORDER BY rowid").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT id, embedding FROM memories WHERE scope = ? ORDER BY rowid", (scope,)
                ).fetchall()
            dim = self.embedder.dim
            ids = [r[0] for r in rows]
            buffer = b"".join(r[1] for r in rows)
            if len(buffer) != len(rows) * dim * 4:
                raise MemFactoryError(
                    f"memory bank {self.path} holds embeddings that are not {dim}-dimensional float32 "
                    f"(embedder {getattr(self.embedder, 'name', '?')}); call reembed()"
                )
            vectors_t = np.ascontiguousarray(np.frombuffer(buffer, dtype=np.float32).reshape(len(rows), dim).T)
            matrix = _Matrix(version, ids, vectors_t)
            # Keep only current matrices: stale ones would pin memory until their scope is searched again.
            self._matrices = {s: m for s, m in self._matrices.items() if m.version == version}
            self._matrices[scope] = matrix
            return matrix

    def search(
        self, query: str, k: int = 10, scope: str | None = None, *, min_score: float | None = None
    ) -> list[MemoryHit]:
        """The ``k`` memories most similar to ``query`` (cosine), best first."""
        return self.search_vector(self._query_vector(str(query)), k, scope, min_score=min_score)

    def search_vector(
        self, vector: np.ndarray, k: int = 10, scope: str | None = None, *, min_score: float | None = None
    ) -> list[MemoryHit]:
        """Top-k by cosine for an already-embedded query (a unit float32 vector)."""
        if k <= 0:
            return []
        matrix = self._matrix(scope)
        n = len(matrix.ids)
        if n == 0:
            return []
        scores = np.asarray(vector, dtype=np.float32) @ matrix.vectors_t
        return self._hits(matrix, scores, k, min_score)

    def search_many(
        self, queries: Sequence[str], k: int = 10, scope: str | None = None, *, min_score: float | None = None
    ) -> list[list[MemoryHit]]:
        """``search`` for many queries with one embedding batch and one matrix product."""
        if k <= 0 or not queries:
            return [[] for _ in queries]
        matrix = self._matrix(scope)
        if not matrix.ids:
            return [[] for _ in queries]
        scores = self.encode([str(q) for q in queries]) @ matrix.vectors_t
        return [self._hits(matrix, row, k, min_score) for row in scores]

    def _hits(self, matrix: _Matrix, scores: np.ndarray, k: int, min_score: float | None) -> list[MemoryHit]:
        n = len(scores)
        k = min(k, n)
        top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        if min_score is not None:
            top = top[scores[top] >= min_score]
        ids = [matrix.ids[i] for i in top]
        if not ids:
            return []
        placeholders = ",".join("?" * len(ids))
        rows = self._read(f"SELECT {_ITEM_COLUMNS} FROM memories WHERE id IN ({placeholders})", ids, "search")
        by_id = {r[0]: _item(r) for r in rows}
        # A row deleted between building the matrix and this read is simply skipped.
        return [MemoryHit(by_id[ident], float(scores[i])) for ident, i in zip(ids, top) if ident in by_id]

    # ------------------------------------------------------------------ branching
    def snapshot(self, path: str | Path | None = None) -> MemoryStore:
        """A full copy of the bank (in memory unless ``path`` is given) that shares no state with it.

        Built with SQLite's online backup API; the embedding matrices already in memory are handed
        to the copy (they are never modified in place), so searching the copy costs no rebuild.
        """
        copy = MemoryStore(path if path is not None else ":memory:", embedder=self._embedder, timeout=self.timeout)
        with self._lock, copy._lock, self._errors("snapshot"):
            self._conn.backup(copy._conn)
            copy._generation += 1
            self._hand_matrices(copy)
        return copy

    def restore(self, snapshot: MemoryStore) -> None:
        """Makes this bank identical to ``snapshot`` (e.g. after a rollout that should not count)."""
        if snapshot is self:
            return
        with self._lock, snapshot._lock, self._errors("restore from a snapshot"):
            snapshot._conn.backup(self._conn)
            self._generation += 1
            if self.path != ":memory:" and self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._conn.execute("PRAGMA journal_mode=wal")
            if self._embedder is None and snapshot._embedder is not None:
                self._embedder = snapshot._embedder
            self._matrices = {}
            snapshot._hand_matrices(self)

    def _hand_matrices(self, other: MemoryStore) -> None:
        """Give ``other`` (now byte-identical to self) our still-valid matrices."""
        mine = self._version()
        theirs = other._version()
        other._matrices = {
            scope: _Matrix(theirs, m.ids, m.vectors_t) for scope, m in self._matrices.items() if m.version == mine
        }


__all__ = [
    "ApplyResult",
    "HistoryEntry",
    "MemoryHit",
    "MemoryItem",
    "MemoryNotFound",
    "MemoryStore",
    "Operation",
    "normalise_op",
]
