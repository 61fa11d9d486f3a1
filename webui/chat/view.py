"""Showing a chat's memory (no Gradio): the operations of every turn, the memories the last answer saw,
the whole bank, and MemAgent's memory per chunk (the Playground's trace view, reused)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from memfactory.memory.store import MemoryStore
from webui.chat.session import Turn
from webui.playground.render import trace_html

OPS_COLUMNS = ["turn", "session", "op", "memory", "old", "new", "applied"]
RETRIEVED_COLUMNS = ["turn", "memory", "score", "selected", "cited", "id"]
BANK_COLUMNS = ["memory", "tags", "updated", "id"]
STATUS_ICONS = {"running": "⏳", "done": "✅", "stopped": "⏹", "failed": "❌"}


def _short(ident: str | None) -> str:
    return (ident or "")[:8]


def ops_frame(turns: Sequence[Turn]) -> pd.DataFrame:
    """Every memory operation so far, oldest first; a turn that changed nothing shows one NONE row."""
    rows = []
    for turn in turns:
        if turn.applied is None and turn.status == "running":
            continue  # its operations are not decided yet
        entries = turn.ops or [{"op": "NONE", "new": "(no new facts)" if not turn.facts else None,
                                "applied": turn.applied}]
        for entry in entries:
            rows.append({"turn": turn.number, "session": turn.session, "op": entry.get("op", "NONE"),
                         "memory": _short(entry.get("id")), "old": entry.get("old") or "",
                         "new": entry.get("new") or "", "applied": _yes_no(entry.get("applied"))})
    return pd.DataFrame(rows, columns=OPS_COLUMNS)


def _yes_no(value: object) -> str:
    return "" if value is None else ("yes" if value else "no")


def retrieved_frame(turn: Turn | None) -> pd.DataFrame:
    """The memories the turn's answer saw, best score first (RMM: which the reranker kept)."""
    rows = [] if turn is None else [
        {"turn": turn.number, "memory": m.get("text", ""), "score": round(float(m.get("score", 0.0)), 4),
         "selected": _yes_no(m.get("selected")), "cited": _yes_no(m.get("cited")), "id": _short(m.get("id"))}
        for m in turn.retrieved
    ]
    return pd.DataFrame(rows, columns=RETRIEVED_COLUMNS)


def bank_frame(bank: MemoryStore | None) -> pd.DataFrame:
    """The whole bank, in the order the memories were added."""
    rows = [] if bank is None else [
        {"memory": m.text, "tags": ", ".join(m.tags), "updated": m.updated_at[:19], "id": _short(m.id)}
        for m in bank.all()
    ]
    return pd.DataFrame(rows, columns=BANK_COLUMNS)


def memagent_html(turn: Turn | None) -> str:
    """The memory after each chunk read, then the answer (the Playground's trace table)."""
    if turn is None or not turn.trace:
        return "<div id='mf-chat-trace'>(the memory after each chunk appears here)</div>"
    head = ("<p><i>Answered from the memory already read (no re-reading).</i></p>" if turn.reused_memory else "")
    return f"<div id='mf-chat-trace'>{head}{trace_html(turn.trace)}</div>"


def status_markdown(describe: str, turn: Turn | None, bank: str | None = None, session: int = 1) -> str:
    """One line: what the chat talks to, the bank and session, and what the last turn is doing or did."""
    where = f"**{describe}**" + (f" · bank **{bank}**" if bank else "") + f" · session {session}"
    if turn is None:
        return where
    icon = STATUS_ICONS[turn.status]
    doing = turn.step or turn.note or turn.status
    return f"{where} · turn {turn.number}: {icon} {doing}"
