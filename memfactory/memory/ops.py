"""THE memory-operation language: ADD / UPDATE / DELETE / NONE, its aliases and field names.

One dialect for everything that reads operations: ``MemoryStore.apply`` (``Operation.from_dict``)
and the updater's parser (``modules.memory_ops.parse_operations``) accept the same op words and
the same fields, so an operation the parser understands is one the store understands:

* op words (case-insensitive): ``OPS`` and ``OP_ALIASES`` (``INSERT`` -> ADD, ``REMOVE`` -> DELETE,
  ``NOOP`` / ``NO_OP`` / ``NOTHING`` / ``KEEP`` -> NONE);
* fields: ``FIELDS`` names, per meaning, the keys it may come under, first match wins: the op
  under ``op|event|operation|action`` (ours, mem0's and the common LLM spellings), the memory id
  under ``id|memory_id``, the text under ``text|memory|value|fact``.

``apply_batch`` validates a whole batch before touching the bank and applies it in one
transaction: one bad operation leaves the bank exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from memfactory.errors import MemFactoryError
from memfactory.memory.records import UNSET, RowWriter, check_scope, check_text, new_row, now
from memfactory.text import is_utf8_text

OPS = ("ADD", "UPDATE", "DELETE", "NONE")
OP_ALIASES = {
    "INSERT": "ADD",
    "REMOVE": "DELETE",
    "NOOP": "NONE",
    "NO_OP": "NONE",
    "NOTHING": "NONE",
    "KEEP": "NONE",
}
FIELDS: dict[str, tuple[str, ...]] = {
    "op": ("op", "event", "operation", "action"),
    "id": ("id", "memory_id"),
    "text": ("text", "memory", "value", "fact"),
}


def read_field(data: Mapping[Any, Any], name: str) -> Any:
    """The value of field ``name`` under the first of its ``FIELDS`` keys present (None if none is)."""
    for key in FIELDS[name]:
        if key in data:
            return data[key]
    return None


def canonical_op(op: Any) -> str | None:
    """The op an op word means (``OPS``), or None for a word the language does not know."""
    name = str(op).strip().upper()
    name = OP_ALIASES.get(name, name)
    return name if name in OPS else None


def normalise_op(op: Any) -> str:
    """``canonical_op`` that refuses an unknown word with a MemFactoryError."""
    name = canonical_op(op)
    if name is None:
        raise MemFactoryError(f"unknown memory operation {op!r}; expected one of {', '.join(OPS)}")
    return name


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
        """An operation from a JSON object in the one dialect (``FIELDS``, ``OP_ALIASES``), e.g. ours
        ``{"op": "ADD", "text": ...}``, mem0's ``{"event": "UPDATE", "id": ..., "text": ...}`` or an
        LLM's ``{"action": "INSERT", "fact": ...}``. ``value`` is also the memory's value column."""
        if not isinstance(data, dict):
            raise MemFactoryError(f"a memory operation must be a JSON object, got {type(data).__name__}")
        op = read_field(data, "op")
        if op is None:
            raise MemFactoryError(f"memory operation {data!r} has no 'op' field (or one of {', '.join(FIELDS['op'])})")
        ident = read_field(data, "id")
        text = read_field(data, "text")
        tags = data.get("tags")
        return cls(
            op=str(op),
            id=None if ident is None else str(ident),
            text=None if text is None else str(text),
            scope=data.get("scope"),
            key=data.get("key"),
            value=None if data.get("value") is None else str(data.get("value")),
            type=data.get("type"),
            tags=[str(t) for t in tags] if isinstance(tags, (list, tuple)) else tags,  # else refused by validate
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


def validate(o: Operation, index: int) -> None:
    """Refuse an operation that cannot be applied, naming its index in the batch."""
    where = f"operation {index} ({o.op})"
    if o.op in ("UPDATE", "DELETE") and not o.id:
        raise MemFactoryError(f"{where}: needs the id of an existing memory")
    if o.op == "ADD":
        check_text(o.text, where)
    if o.op == "UPDATE" and o.text is not None:
        check_text(o.text, where)
    if o.scope is not None:
        check_scope(o.scope, where)
    # A dict from a model (Operation.from_dict) may carry anything: refuse here, not in SQLite.
    for name in ("id", "text", "scope", "key", "value", "type"):
        value = getattr(o, name)
        if value is not None and not (isinstance(value, str) and is_utf8_text(value)):
            raise MemFactoryError(f"{where}: {name} must be valid text, got {value!r:.80}")
    if o.tags is not None and not (
        isinstance(o.tags, (list, tuple)) and all(isinstance(t, str) and is_utf8_text(t) for t in o.tags)
    ):
        raise MemFactoryError(f"{where}: tags must be a list of strings, got {o.tags!r:.80}")


class Bank(Protocol):
    """What ``apply_batch`` needs of a bank (``MemoryStore``)."""

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def writing(self, action: str, *, embeds: bool = False) -> AbstractContextManager[RowWriter]: ...


def apply_batch(
    bank: Bank,
    ops: Sequence[Operation | dict[str, Any]],
    *,
    actor: str | None = None,
    scope: str = "default",
    raise_on_error: bool = True,
) -> ApplyResult:
    """Applies a batch of ADD/UPDATE/DELETE/NONE operations in one transaction (see ``MemoryStore.apply``)."""
    result = ApplyResult()
    index: int | None = 0
    try:
        parsed: list[Operation] = []
        for index, op in enumerate(ops):
            parsed.append(op if isinstance(op, Operation) else Operation.from_dict(op))
            validate(parsed[-1], index)
        index = 0
        texts = [o.text for o in parsed if o.op in ("ADD", "UPDATE") and o.text is not None]
        vectors = bank.encode(texts)
        with bank.writing(f"apply {len(parsed)} memory operations", embeds=bool(texts)) as rows:
            row = 0
            at = now()
            for index, o in enumerate(parsed):
                where = f"operation {index} ({o.op})"
                if o.op == "NONE":
                    result.skipped += 1
                elif o.op == "ADD":
                    new = new_row(
                        o.id,
                        o.text,
                        vectors[row],
                        scope=o.scope or scope,
                        key=o.key,
                        value=o.value,
                        type=o.type or "fact",
                        tags=o.tags or (),
                        at=at,
                    )
                    row += 1
                    if o.id is not None:
                        rows.reject_existing([o.id], where)
                    rows.insert([new], actor)
                    result.added.append(new["id"])
                elif o.op == "UPDATE":
                    vector = None
                    if o.text is not None:
                        vector = vectors[row]
                        row += 1
                    rows.update(
                        o.id,
                        vector,
                        text=o.text,
                        key=UNSET if o.key is None else o.key,
                        value=UNSET if o.value is None else o.value,
                        type=o.type,
                        tags=o.tags,
                        actor=actor,
                        where=where,
                    )
                    result.updated.append(o.id)
                else:
                    rows.delete(o.id, actor, where)
                    result.deleted.append(o.id)
            index = None  # a failure from here on (the commit: disk full, lock) is no one operation's
    except MemFactoryError as exc:
        if raise_on_error:
            raise
        return ApplyResult(ok=False, error=str(exc), failed_index=index)
    return result


__all__ = [
    "FIELDS",
    "OPS",
    "OP_ALIASES",
    "ApplyResult",
    "Operation",
    "apply_batch",
    "canonical_op",
    "normalise_op",
    "read_field",
    "validate",
]
