"""Recover the JSON value a model meant to write from what it wrote.

Small models write JSON badly: inside code fences, after a think block, followed by prose, with
single quotes, Python's True/False/None, trailing commas or a missing closing bracket.
:func:`parse_json` returns the first JSON value it can recover from such text (or None) with a
:class:`ParseReport` of what it had to do; it never raises. The memory modules read extractor
facts, updater operations and reranker ids through it (:mod:`memfactory.modules.memory_ops`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from memfactory.text import strip_thinking

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)(```|$)", re.DOTALL)
_CLOSERS = {"[": "]", "{": "}"}
_BARE = {"True": "true", "False": "false", "None": "null"}


@dataclass
class ParseReport:
    """How a response was read: whether JSON was found, what had to be repaired, what was dropped."""

    parsed: bool = False
    repaired: bool = False
    terminated: bool = True
    warnings: Counter = field(default_factory=Counter)

    def warn(self, name: str, amount: int = 1) -> None:
        self.warnings[name] += amount


def _candidates(text: str) -> list[str]:
    """Code-fence bodies first (```json ... ```, an unclosed fence runs to the end), then the text."""
    out = [m.group(2) for m in _FENCE.finditer(text) if m.group(2).strip()]
    out.append(text)
    return out


def repair_json(text: str) -> str | None:
    """The first JSON value in ``text`` (starting at its first ``[`` or ``{``), repaired to valid syntax.

    Converts single-quoted strings, Python's True/False/None, drops trailing commas, stops at the end
    of the value (trailing prose is ignored) and closes unclosed strings and brackets. Returns None
    when there is no bracket at all.
    """
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None  # the quote character of the open string
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == "\\" and i + 1 < n:
                nxt = text[i + 1]
                if nxt == "'":  # \' is not a JSON escape
                    out.append("'")
                else:
                    out.append(ch + nxt)
                i += 2
                continue
            if ch == quote:
                out.append('"')
                quote = None
            elif ch == '"':  # a double quote inside a single-quoted string
                out.append('\\"')
            elif ch == "\n":
                out.append("\\n")
            elif ch in "\r\t" or ord(ch) < 0x20:
                out.append(" ")
            else:
                out.append(ch)
            i += 1
            continue
        if ch in "\"'":
            quote = ch
            out.append('"')
        elif ch in "[{":
            stack.append(_CLOSERS[ch])
            out.append(ch)
        elif ch in "]}":
            if not stack:
                break
            while out and out[-1] in " \n\t\r,":  # trailing comma (and whitespace) before a closer
                if out[-1] == ",":
                    out.pop()
                    break
                out.pop()
            # A mismatched closer closes what is open up to it.
            expected = stack.pop()
            out.append(expected)
            if not stack:
                return "".join(out)
        elif ch.isalpha():
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            out.append(_BARE.get(word, word if word in ("true", "false", "null") else json.dumps(word)))
            i = j
            continue
        else:
            out.append(ch)
        i += 1
    if quote is not None:
        out.append('"')
    while out and out[-1] in " \n\t\r,:":
        out.pop()
    out.extend(reversed(stack))
    return "".join(out)


def parse_json(text: Any) -> tuple[Any, ParseReport]:
    """The first JSON value a model wrote, or ``(None, report)``; never raises.

    Thinking up to the last ``</think>`` is dropped (an unterminated block means nothing was
    written: ``report.terminated`` is False).
    """
    report = ParseReport()
    if not isinstance(text, str):
        return None, report
    visible, terminated = strip_thinking(text)
    report.terminated = terminated
    if not terminated:
        return None, report
    decoder = json.JSONDecoder()
    for candidate in _candidates(visible):
        start = min((i for i in (candidate.find("["), candidate.find("{")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            value, _end = decoder.raw_decode(candidate[start:])
            report.parsed = True
            return value, report
        except (RecursionError, ValueError):  # ValueError: JSONDecodeError, or an integer of > 4300 digits
            pass
        try:
            fixed = repair_json(candidate)
            if fixed is None:
                continue
            value = json.loads(fixed)
        except (json.JSONDecodeError, RecursionError, ValueError):
            continue
        report.parsed = report.repaired = True
        return value, report
    return None, report
