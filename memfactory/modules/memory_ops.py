"""Reading what a model wrote as memory JSON, and applying memory operations safely.

Small models write JSON badly; :func:`memfactory.json_repair.parse_json` recovers the first JSON
value from what they wrote (or returns None) and never raises. On top of it:

* ``parse_facts``: an extractor's list of facts ``{key, value, type, tags}``;
* ``parse_operations``: an updater's ADD / UPDATE / DELETE / NONE list. Memories are shown to the
  model under short ids ("0", "1", ...) and mapped back; an unknown id, an unknown op or an
  operation missing what it needs becomes NONE and is counted in ``ParseReport.warnings`` (the
  agents add those to ``Trajectory.counters``), never an exception;
* ``parse_id_list``: a reranker's or answerer's list of memory ids (citations);
* ``apply_operations``: one atomic ``MemoryStore.apply`` (a failed batch leaves the bank as it
  was) plus per-operation trace entries ``{op, id, old, new}`` for the UI.

The published MemFactory code did not repair JSON at all; with small policies that meant most
manager outputs were silently lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memfactory.json_repair import ParseReport, parse_json
from memfactory.memory.ops import ApplyResult, Operation, canonical_op, read_field
from memfactory.memory.store import MemoryStore
from memfactory.text import strip_thinking


def _as_list(value: Any, keys: Sequence[str]) -> list[Any] | None:
    """A list, or the list under one of ``keys`` of a dict (``{"memory": [...]}``), or a lone dict as [dict]."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in keys:
            inner = value.get(key)
            if isinstance(inner, list):
                return inner
        return [value]
    return None


def _text(value: Any) -> str:
    """A JSON value as memory text: never raises, and always valid UTF-8 (a JSON escape such as
    "\\ud800" decodes to a lone surrogate, which SQLite and the tokenizers refuse: replaced by "?")."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (RecursionError, ValueError):  # nested deeper than the encoder goes
            return ""
    else:
        text = str(value).strip()
    return valid_text(text)


def valid_text(text: str) -> str:
    """``text`` with lone surrogates replaced by "?" (unchanged when it is valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


# --------------------------------------------------------------------------- facts


@dataclass
class Fact:
    """One extracted memory fact; ``text`` is what the bank stores and embeds."""

    value: str
    key: str = ""
    type: str = "fact"
    tags: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return f"{self.key}: {self.value}" if self.key and self.key.lower() not in self.value.lower() else self.value

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "type": self.type, "tags": list(self.tags)}


def parse_facts(text: Any, *, max_facts: int = 32, max_chars: int = 500) -> tuple[list[Fact], ParseReport]:
    """An extractor's facts. Accepts a list of objects or of strings, or ``{"facts": [...]}``."""
    value, report = parse_json(text)
    items = _as_list(value, ("facts", "memories", "memory", "items"))
    if items is None:
        report.parsed = False
        return [], report
    facts: list[Fact] = []
    for item in items:
        if isinstance(item, str):
            fact = Fact(value=valid_text(item.strip()))
        elif isinstance(item, dict):
            raw = item.get("value", item.get("fact", item.get("text", item.get("memory"))))
            tags = item.get("tags")
            fact = Fact(
                value=_text(raw),
                key=_text(item.get("key")),
                type=_text(item.get("type")) or "fact",
                tags=[_text(t) for t in tags if _text(t)] if isinstance(tags, list) else [],
            )
        else:
            report.warn("invalid_fact")
            continue
        if not fact.value:
            report.warn("invalid_fact")
            continue
        fact.value = fact.value[:max_chars]
        facts.append(fact)
    if len(facts) > max_facts:
        report.warn("facts_dropped", len(facts) - max_facts)
        facts = facts[:max_facts]
    return facts, report


# --------------------------------------------------------------------------- operations


def parse_operations(
    text: Any,
    id_map: Mapping[str, str],
    *,
    max_ops: int = 32,
    max_chars: int = 500,
) -> tuple[list[Operation], ParseReport]:
    """An updater's operations with short ids mapped to bank ids through ``id_map``.

    Op words and fields are the one dialect of ``memory/ops.py`` (``OP_ALIASES``, ``FIELDS``), the
    same the store's ``apply`` reads. Every returned operation is valid against a bank holding
    ``id_map``'s memories: unknown ops, unknown ids, ADD/UPDATE without text and operations on an
    id deleted earlier in the same batch become NONE and are counted (``unknown_op``,
    ``unknown_memory_id``, ``invalid_op``, ``conflicting_op``).
    """
    value, report = parse_json(text)
    items = _as_list(value, ("operations", "ops", "memory", "actions", "updates"))
    if items is None:
        report.parsed = False
        return [], report
    lookup = {str(k).strip(): v for k, v in id_map.items()}
    reverse = set(lookup.values())
    deleted: set[str] = set()
    ops: list[Operation] = []
    for item in items:
        if not isinstance(item, dict):
            report.warn("invalid_op")
            ops.append(Operation("NONE"))
            continue
        name = canonical_op(_text(read_field(item, "op")))
        if name is None:
            report.warn("unknown_op")
            ops.append(Operation("NONE"))
            continue
        body = _text(read_field(item, "text"))[:max_chars]
        if name == "NONE":
            ops.append(Operation("NONE"))
            continue
        if name == "ADD":
            if not body:
                report.warn("invalid_op")
                ops.append(Operation("NONE"))
                continue
            tags = item.get("tags")
            ops.append(
                Operation(
                    "ADD",
                    text=body,
                    key=_text(item.get("key")) or None,
                    type=_text(item.get("type")) or None,
                    tags=[_text(t) for t in tags if _text(t)] if isinstance(tags, list) else None,
                )
            )
            continue
        short = _text(read_field(item, "id"))
        target = lookup.get(short) or (short if short in reverse else None)
        if target is None:
            report.warn("unknown_memory_id")
            ops.append(Operation("NONE"))
            continue
        if target in deleted:
            report.warn("conflicting_op")
            ops.append(Operation("NONE"))
            continue
        if name == "UPDATE":
            if not body:
                report.warn("invalid_op")
                ops.append(Operation("NONE"))
                continue
            ops.append(Operation("UPDATE", id=target, text=body))
        else:
            deleted.add(target)
            ops.append(Operation("DELETE", id=target))
    if len(ops) > max_ops:
        report.warn("ops_dropped", len(ops) - max_ops)
        ops = ops[:max_ops]
    return ops, report


_NUMBER = re.compile(r"[A-Za-z0-9_\-:]+")


def parse_id_list(text: Any, valid: Sequence[str], *, limit: int | None = None) -> tuple[list[str] | None, ParseReport]:
    """An ordered, de-duplicated list of ids drawn from ``valid`` (short ids as strings).

    Accepts a JSON list (``[2, "0"]``), ``{"ids": [...]}``, objects with an ``id`` field, or — when
    no JSON is found — a bracketed or comma-separated list of ids in prose ("[1, 3]", "1, 3").
    Returns None when nothing id-like is found at all; ids not in ``valid`` are dropped and counted.
    """
    value, report = parse_json(text)
    if not report.terminated:
        return None, report
    items: list[Any] | None
    if isinstance(value, (list, dict)):
        items = _as_list(value, ("ids", "selected", "citations", "memories", "cite"))
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        items = [value]
    else:
        items = None
    if items is None:
        visible = strip_thinking(text)[0] if isinstance(text, str) else ""
        tokens = _NUMBER.findall(visible)
        items = [t for t in tokens if t in set(valid)]
        if not items:
            return None, report
    allowed = {str(v) for v in valid}
    out: list[str] = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("id", item.get("memory_id"))
        if isinstance(item, bool) or item is None or isinstance(item, (list, dict)):
            report.warn("invalid_id")
            continue
        ident = str(item).strip().strip("[]#")
        if isinstance(item, float) and item.is_integer():
            ident = str(int(item))
        if ident not in allowed:
            report.warn("unknown_memory_id")
            continue
        if ident not in out:
            out.append(ident)
    if limit is not None and len(out) > limit:
        report.warn("ids_dropped", len(out) - limit)
        out = out[:limit]
    return out, report


# --------------------------------------------------------------------------- applying


def apply_operations(
    store: MemoryStore, ops: Sequence[Operation], *, scope: str = "default", actor: str | None = None
) -> tuple[ApplyResult, list[dict[str, Any]]]:
    """Apply ``ops`` as one atomic batch; returns the result and trace entries ``{op, id, old, new}``.

    A batch that fails (it should not, after ``parse_operations``) leaves the bank unchanged and
    comes back with ``ok=False``; its trace entries say ``applied: False``.
    """
    olds = {}
    for o in ops:
        if o.op in ("UPDATE", "DELETE") and o.id and o.id not in olds:
            item = store.get(o.id)
            olds[o.id] = item.text if item is not None else None
    result = store.apply(list(ops), actor=actor, scope=scope, raise_on_error=False)
    added = iter(result.added)
    trace = []
    for o in ops:
        if o.op == "NONE":
            continue
        entry: dict[str, Any] = {"op": o.op, "id": o.id, "old": None, "new": None, "applied": result.ok}
        if o.op == "ADD":
            entry["id"] = next(added, None) if result.ok else o.id
            entry["new"] = o.text
        elif o.op == "UPDATE":
            entry["old"], entry["new"] = olds.get(o.id), o.text
        else:
            entry["old"] = olds.get(o.id)
        trace.append(entry)
    return result, trace


__all__ = [
    "Fact",
    "apply_operations",
    "parse_facts",
    "parse_id_list",
    "parse_operations",
    "valid_text",
]
