"""The long-term memory bank: SQLite rows with cached embeddings and a history of every operation.

In the spirit of mem0: memories are short texts in a scope ("user:alice", "session:3"), searched by
cosine similarity of real sentence embeddings (see embed.py), changed by ADD / UPDATE / DELETE
operations that are recorded in a ``history`` table so a memory's life can be replayed.

Composed of parts with one job each: ``memfactory.sqlite`` (connection, WAL, errors, transactions),
``records`` (rows, schema, a transaction's row writes), ``ops`` (the operation language behind
``apply``) and ``index`` (per-scope embedding matrices behind one version token).

Why the details matter for training:
- ``apply`` runs a whole batch of operations (what a memory-manager policy emits for one turn) in a
  single SQLite transaction: one bad operation leaves the bank exactly as it was.
- ``snapshot`` / ``restore`` branch a bank with SQLite's backup API so each GRPO rollout works on its
  own copy; the in-memory embedding matrices are shared with the copy, so nothing is recomputed.
- Embeddings are computed in batches on write and stored as float32 BLOBs; search keeps a per-scope
  matrix in memory (rebuilt only after a write by this or another connection) and ranks with one
  matrix-vector product plus ``argpartition``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import Embedder, encode_unit, get_embedder
from memfactory.memory.index import EmbeddingIndex, Matrix, top_k
from memfactory.memory.ops import ApplyResult, Operation, apply_batch
from memfactory.memory.records import (
    BANK_TABLES,
    ITEM_COLUMNS,
    UNSET,
    HistoryEntry,
    MemoryHit,
    MemoryItem,
    RowWriter,
    check_embedder,
    check_scope,
    check_text,
    create_schema,
    has_schema,
    item_from_row,
    new_row,
    now,
    read_meta,
    record_embedder,
    table_names,
)
from memfactory.sqlite import MEMORY, connect, immediate, sqlite_errors, switch_to_wal


class MemoryStore:
    """A memory bank in one SQLite file (or ``":memory:"``).

    ``embedder=None`` uses the embedder the bank was built with (recorded in its ``meta`` table), or
    the bundled all-MiniLM-L6-v2 for a new bank; it is loaded only when something needs encoding.
    ``timeout`` is how long a write waits for another writer before giving up with MemFactoryError.
    """

    def __init__(self, path: str | Path, embedder: Embedder | None = None, *, timeout: float = 10.0):
        self.path = str(path) if str(path) == MEMORY else str(Path(path).expanduser())
        self.timeout = float(timeout)
        self._embedder = embedder
        self._lock = threading.RLock()
        self._query_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._conn = self._connect()
        try:
            self._index = EmbeddingIndex(self._conn)
            self.db = sqlite_utils.Database(self._conn)
            self._init_schema()
            if embedder is not None:
                check_embedder(self._read_meta(), embedder, count=self.count(), bank=self.path)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open_existing(cls, path: str | Path, embedder: Embedder | None = None, *, timeout: float = 10.0) -> MemoryStore:
        """A bank file that must already be one. The constructor makes a bank of any SQLite file (it
        adds its tables), so a file picked by a user is read first, read-only: a missing file, one that
        is not SQLite, or a SQLite file without the bank's tables (a runs database, say) is refused with
        the reason and left untouched."""
        target = Path(path).expanduser()
        if not target.is_file():
            raise MemFactoryError(f"memory bank {target} does not exist (or is not a file)")
        with sqlite_errors(f"memory bank {target}", "read its tables", path=target, timeout=timeout):
            conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
            try:
                tables = table_names(conn)
            finally:
                conn.close()
        missing = [name for name in BANK_TABLES if name not in tables]
        if missing:
            found = ", ".join(sorted(tables)) or "none"
            raise MemFactoryError(
                f"{target} is a SQLite file but not a memory bank: it lacks the table(s) {', '.join(missing)} "
                f"(its tables: {found}); nothing was changed"
            )
        return cls(target, embedder, timeout=timeout)

    # ------------------------------------------------------------------ connection and transactions
    def _connect(self) -> sqlite3.Connection:
        if self.path != MEMORY:
            target = Path(self.path)
            if target.is_dir():
                raise MemFactoryError(f"memory bank {self.path} is a directory, not a SQLite file")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemFactoryError(f"cannot create the folder for memory bank {self.path}: {exc}") from exc
        with self._errors("open the bank"):
            return connect(self.path, timeout=self.timeout, check_same_thread=False)

    def _errors(self, action: str) -> AbstractContextManager[None]:
        """Turn SQLite failures into one readable MemFactoryError naming the bank and the action."""
        return sqlite_errors(
            f"memory bank {self.path}",
            action,
            path=self.path,
            timeout=self.timeout,
            locked_hint="Close the other writer or raise MemoryStore(timeout=...).",
        )

    @contextmanager
    def writing(self, action: str, *, embeds: bool = False) -> Iterator[RowWriter]:
        """One IMMEDIATE transaction whose row writes go through the yielded ``RowWriter``:
        everything inside commits together or not at all. ``embeds``: it stores embeddings, so the
        bank records which embedder they come from. The index learns what the write changed."""
        with self._lock, self._errors(action):
            writer = RowWriter(self.db, self.path)
            try:
                with immediate(self._conn):
                    before = self._index.token()  # inside the write lock: no other commit can follow
                    if embeds:
                        record_embedder(self.db, self.embedder, self.path)
                    yield writer
            except BaseException:
                self._index.replaced()
                raise
            self._index.committed(before, writer.added, writer.rewritten)

    def _read(self, sql: str, params: Sequence[Any] = (), action: str = "read") -> list[tuple]:
        with self._lock, self._errors(action):
            return self._conn.execute(sql, params).fetchall()

    def _init_schema(self) -> None:
        with self._lock, self._errors("read its schema"):
            if has_schema(self._conn):
                return  # an existing bank opens without taking the write lock
        with self.writing("create its tables"):
            create_schema(self.db)

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
    @property
    def embedder(self) -> Embedder:
        """The bank's embedder, loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    name = self._read_meta().get("embedder", "minilm")
                    self._embedder = get_embedder(name)
        return self._embedder

    def _read_meta(self) -> dict[str, str]:
        with self._lock, self._errors("read its metadata"):
            return read_meta(self._conn)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeds texts in one batch (duplicates encoded once) as unit float32 rows."""
        return encode_unit(self.embedder, texts)

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
        texts = [check_text(t, f"add to {self.path} (text {i})") for i, t in enumerate(texts)]
        check_scope(scope, f"add to {self.path}")
        if ids is not None and len(ids) != len(texts):
            raise MemFactoryError(f"add_many: {len(ids)} ids for {len(texts)} texts")
        tags = list(tags)
        vectors = self.encode(texts)
        at = now()
        rows = [
            new_row(
                None if ids is None else ids[i],
                t,
                vectors[i],
                scope=scope,
                key=key,
                value=value,
                type=type,
                tags=tags,
                at=at,
            )
            for i, t in enumerate(texts)
        ]
        with self.writing(f"add {len(rows)} memories", embeds=True) as writer:
            if ids is not None:
                writer.reject_existing([r["id"] for r in rows], "add")
            writer.insert(rows, actor)
        return [r["id"] for r in rows]

    def update(
        self,
        id: str,
        text: str | None = None,
        *,
        key: Any = UNSET,
        value: Any = UNSET,
        type: str | None = None,
        tags: Iterable[str] | None = None,
        actor: str | None = None,
    ) -> MemoryItem:
        """Changes a memory (re-embedding only when the text changes) and returns the new version."""
        where = f"update {id!r}"
        vector = None
        if text is not None:
            check_text(text, where)
            vector = self.encode([text])[0]
        with self.writing(where, embeds=vector is not None) as writer:
            return writer.update(
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

    def delete(self, id: str, actor: str | None = None) -> MemoryItem:
        """Removes a memory (its history stays) and returns what it was."""
        where = f"delete {id!r}"
        with self.writing(where) as writer:
            return writer.delete(id, actor, where)

    def reset(self, scope: str | None = None) -> int:
        """Empties one scope (or the whole bank), history included: a clean slate, e.g. per episode."""
        with self.writing("reset" if scope is None else f"reset scope {scope!r}") as writer:
            if scope is None:
                count = writer.execute("DELETE FROM memories").rowcount
                writer.execute("DELETE FROM history")
            else:
                count = writer.execute("DELETE FROM memories WHERE scope = ?", (scope,)).rowcount
                writer.execute("DELETE FROM history WHERE scope = ?", (scope,))
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

        Operations are ``Operation``s or dicts in the one dialect of ``memory/ops.py`` (``INSERT``,
        ``{"event": "REMOVE"}``, ``{"action": ..., "fact": ...}`` included). Any invalid operation
        (unknown op, unknown id, empty text) rolls back the whole batch: with ``raise_on_error`` a
        MemFactoryError naming the operation's index is raised, otherwise the result has
        ``ok=False``, ``error`` and ``failed_index`` and the bank is unchanged. ``scope`` is the
        default for ADDs that name none.
        """
        return apply_batch(self, ops, actor=actor, scope=scope, raise_on_error=raise_on_error)

    def reembed(self, batch_size: int = 512) -> int:
        """Recomputes every stored embedding with the current embedder (to switch models; the
        embedder-mismatch errors name it as the fix)."""
        rows = self._read("SELECT id, text FROM memories ORDER BY rowid", action="read memories to re-embed")
        vectors = [self.encode([t for _, t in rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)]
        with self.writing("re-embed the bank") as writer:
            writer.execute("DELETE FROM meta WHERE key IN ('embedder', 'dim')")
            record_embedder(self.db, self.embedder, self.path)
            flat = np.concatenate(vectors) if vectors else np.zeros((0, self.embedder.dim), np.float32)
            writer.conn.executemany(
                "UPDATE memories SET embedding = ? WHERE id = ?",
                [(flat[i].tobytes(), ident) for i, (ident, _) in enumerate(rows)],
            )
        return len(rows)

    # ------------------------------------------------------------------ reads
    def get(self, id: str) -> MemoryItem | None:
        rows = self._read(f"SELECT {ITEM_COLUMNS} FROM memories WHERE id = ?", (id,), f"get {id!r}")
        return item_from_row(rows[0]) if rows else None

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
        sql = f"SELECT {ITEM_COLUMNS} FROM memories{clause} ORDER BY rowid"
        return [item_from_row(r) for r in self._read(sql, params, "list memories")]

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return self._read("SELECT count(*) FROM memories", action="count memories")[0][0]
        return self._read("SELECT count(*) FROM memories WHERE scope = ?", (scope,), "count memories")[0][0]

    def __len__(self) -> int:
        return self.count()

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

    # ------------------------------------------------------------------ search
    def _matrix(self, scope: str | None) -> Matrix:
        """The cached (ids, vectors) of a scope, rebuilt if any connection wrote since it was built."""
        with self._lock, self._errors("load embeddings"):
            token = self._index.token()
            cached = self._index.get(scope, token)
            if cached is not None:
                return cached
            if scope is None:
                rows = self._conn.execute("SELECT id, embedding FROM memories ORDER BY rowid").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT id, embedding FROM memories WHERE scope = ? ORDER BY rowid", (scope,)
                ).fetchall()
            source = f"memory bank {self.path} (embedder {getattr(self.embedder, 'name', '?')})"
            return self._index.build(scope, token, rows, self.embedder.dim, source)

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
        if not matrix.ids:
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

    def _hits(self, matrix: Matrix, scores: np.ndarray, k: int, min_score: float | None) -> list[MemoryHit]:
        top = top_k(scores, k, min_score)
        ids = [matrix.ids[i] for i in top]
        if not ids:
            return []
        placeholders = ",".join("?" * len(ids))
        rows = self._read(f"SELECT {ITEM_COLUMNS} FROM memories WHERE id IN ({placeholders})", ids, "search")
        by_id = {r[0]: item_from_row(r) for r in rows}
        # A row deleted between building the matrix and this read is simply skipped.
        return [MemoryHit(by_id[ident], float(scores[i])) for ident, i in zip(ids, top) if ident in by_id]

    # ------------------------------------------------------------------ branching
    def snapshot(self, path: str | Path | None = None) -> MemoryStore:
        """A full copy of the bank (in memory unless ``path`` is given) that shares no state with it.

        Built with SQLite's online backup API; the embedding matrices already in memory are handed
        to the copy (they are never modified in place), so searching the copy costs no rebuild.
        """
        copy = MemoryStore(path if path is not None else MEMORY, embedder=self._embedder, timeout=self.timeout)
        with self._lock, copy._lock, self._errors("snapshot"):
            self._conn.backup(copy._conn)
            self._index.hand_to(copy._index)
        return copy

    def restore(self, snapshot: MemoryStore) -> None:
        """Makes this bank identical to ``snapshot`` (e.g. after a rollout that should not count)."""
        if snapshot is self:
            return
        with self._lock, snapshot._lock, self._errors("restore from a snapshot"):
            snapshot._conn.backup(self._conn)
            if self.path != MEMORY:
                switch_to_wal(self._conn, self.timeout)  # a backup copies the source's journal mode
            if self._embedder is None and snapshot._embedder is not None:
                self._embedder = snapshot._embedder
            snapshot._index.hand_to(self._index)


__all__ = ["MemoryStore"]
