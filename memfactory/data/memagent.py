"""Load long-context QA sets in MemAgent's public formats into ``Sample`` objects.

Three record shapes are understood, in ``.json`` (a list), ``.jsonl`` (one record a line) or
``.parquet`` files:

* HotpotQA (``eval_{N}.json``, training JSON): ``{context, input, answers, num_docs, index}``.
* RULER (``eval_{task}_{len}.json``): ``{index, input, context, outputs, answer_prefix, length}``;
  ``outputs`` become the answers, ``answer_prefix`` and ``length`` go to ``Sample.meta`` (the
  prefix is used only where a module opts in: MemAgent's memory-agent eval never uses it), the
  task (``qa_1``, ``fwe``, ... from the file name) goes to ``meta["ruler_task"]``. Synthetic tasks
  get ``meta["metric"] = "string_match_all"`` (the fraction of gold words present); the ``qa_*``
  tasks are question answering and name no metric, so they are scored like HotpotQA (MemAgent:
  sub-EM against ``outputs[0]``).
* verl parquet (MemAgent's ``hotpotqa_train.parquet``): ``{context, prompt (chat list),
  reward_model.ground_truth, extra_info {index, question, num_docs}, data_source}``.

The shape is decided from the first record and every record is then checked against it, so a
broken record is reported as ``DataError`` with the file, the record index and the field rather
than surfacing later as a KeyError deep inside a rollout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from memfactory.errors import DataError
from memfactory.paths import is_file
from memfactory.text import is_utf8_text
from memfactory.types import Sample

FORMATS = ("hotpotqa", "ruler", "verl")


# --------------------------------------------------------------------------- reading records


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The raw records of a .json / .jsonl / .parquet file; DataError for anything unreadable."""
    path = Path(path)
    name = str(path)
    if not is_file(path):
        raise DataError(name, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix not in (".json", ".jsonl"):
        raise DataError(name, f"unsupported file type {suffix or '(none)'!r}; expected .json, .jsonl or .parquet")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(name, f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise DataError(name, "the file is empty")
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    name, f"malformed JSON on line {lineno}: {exc.msg} (column {exc.colno})", record=len(records)
                ) from None
            except (RecursionError, ValueError) as exc:
                raise DataError(name, f"unreadable JSON on line {lineno}: {_json_trouble(exc)}", record=len(records)) from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(name, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except (RecursionError, ValueError) as exc:
            raise DataError(name, f"unreadable JSON: {_json_trouble(exc)}") from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise DataError(name, f"expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise DataError(name, "the file holds no records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(name, f"expected a JSON object, got {type(record).__name__}", record=i)
    return records


def _json_trouble(exc: BaseException) -> str:
    """What Python's JSON reader refused beyond syntax: nesting past the recursion limit, or an
    integer of more than 4300 digits."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001  pyarrow raises several unrelated types for a corrupt file
        raise DataError(str(path), f"unreadable parquet file: {exc}") from None
    if frame.empty:
        raise DataError(str(path), "the file holds no records")
    return [_plain(record) for record in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from parquet -> plain Python lists, dicts and scalars."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- shapes


def detect_format(record: dict[str, Any]) -> str | None:
    if "reward_model" in record or "extra_info" in record:
        return "verl"
    if "outputs" in record:
        return "ruler"
    if "answers" in record or "input" in record:
        return "hotpotqa"
    return None


class _Checker:
    """Field access that turns a bad record into a DataError naming file, record and field."""

    def __init__(self, file: str, index: int, record: dict[str, Any]):
        self.file, self.index, self.record = file, index, record

    def fail(self, field: str, message: str) -> DataError:
        return DataError(self.file, message, record=self.index, field=field)

    def get(self, field: str, source: dict[str, Any] | None = None, *, prefix: str = "") -> Any:
        source = self.record if source is None else source
        if field not in source or source[field] is None:
            return self._missing(prefix + field)
        return source[field]

    def _missing(self, field: str) -> Any:
        raise self.fail(field, "missing field")

    def text(
        self, field: str, source: dict[str, Any] | None = None, *, prefix: str = "", empty_ok: bool = False
    ) -> str:
        value = self.get(field, source, prefix=prefix)
        if not isinstance(value, str):
            raise self.fail(prefix + field, f"expected a string, got {type(value).__name__}")
        if not is_utf8_text(value):
            raise self.fail(prefix + field, "not valid Unicode text (holds a lone surrogate such as \\ud800)")
        if not empty_ok and not value.strip():
            raise self.fail(prefix + field, "empty")
        return value

    def context(self, field: str = "context") -> str:
        value = self.get(field)
        if isinstance(value, list):
            raise self.fail(
                field,
                "context is a list (MemAgent stores document ids for sets above 10000 documents); "
                "only sets with the context text inline are supported",
            )
        return self.text(field)

    def answers(self, field: str, source: dict[str, Any] | None = None, *, prefix: str = "") -> list[str]:
        value = self.get(field, source, prefix=prefix)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [str(value)]
        if not isinstance(value, list) or not value:
            raise self.fail(prefix + field, f"expected a non-empty list of strings, got {_describe(value)}")
        out = []
        for item in value:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str):
                raise self.fail(prefix + field, f"expected strings in the list, got {type(item).__name__}")
            if not is_utf8_text(item):
                raise self.fail(prefix + field, "not valid Unicode text (holds a lone surrogate such as \\ud800)")
            out.append(item)
        return out

    def integer(
        self, field: str, source: dict[str, Any] | None = None, *, prefix: str = "", default: int | None = None
    ) -> int | None:
        source = self.record if source is None else source
        value = source.get(field)
        if value is None:
            return default
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(prefix + field, f"expected an integer, got {value}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise self.fail(prefix + field, f"expected an integer, got {_describe(value)}")
        return int(value)



def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__


def _hotpotqa(c: _Checker, stem: str, i: int) -> Sample:
    index = c.integer("index", default=i)
    num_docs = c.integer("num_docs")
    meta: dict[str, Any] = {"format": "hotpotqa", "index": index, "source": stem}
    if num_docs is not None:
        meta["num_docs"] = num_docs
    return Sample(
        id=f"{stem}-{index}", question=c.text("input"), answers=c.answers("answers"), context=c.context(), meta=meta
    )


_RULER_STEM = re.compile(r"^(?:eval_)?(?P<task>.+?)(?:_(?P<length>\d{3,}))?$")  # lengths are >= 1024


def ruler_task(stem: str) -> str:
    """The RULER task a file stem names: ``eval_qa_1_8192`` -> ``qa_1``, ``eval_fwe_16384`` -> ``fwe``."""
    match = _RULER_STEM.match(stem)
    return match.group("task") if match else stem


def _ruler(c: _Checker, stem: str, i: int) -> Sample:
    index = c.integer("index", default=i)
    task = ruler_task(stem)
    meta: dict[str, Any] = {
        "format": "ruler",
        "index": index,
        "source": stem,
        "ruler_task": task,
        "answer_prefix": c.text("answer_prefix", empty_ok=True) if "answer_prefix" in c.record else "",
    }
    if not task.startswith("qa_"):  # qa_* are QA sets: scored like HotpotQA, against outputs[0] under MemAgent's
        meta["metric"] = "string_match_all"
    length = c.integer("length")
    if length is not None:
        meta["length"] = length
    return Sample(
        id=f"{stem}-{index}", question=c.text("input"), answers=c.answers("outputs"), context=c.context(), meta=meta
    )


def _verl(c: _Checker, stem: str, i: int) -> Sample:
    extra = c.get("extra_info")
    if not isinstance(extra, dict):
        raise c.fail("extra_info", f"expected an object, got {type(extra).__name__}")
    reward_model = c.get("reward_model")
    if not isinstance(reward_model, dict):
        raise c.fail("reward_model", f"expected an object, got {type(reward_model).__name__}")
    answers = c.answers("ground_truth", reward_model, prefix="reward_model.")
    if extra.get("question"):
        question = c.text("question", extra, prefix="extra_info.")
    else:
        question = _question_from_prompt(c)
    index = c.integer("index", extra, prefix="extra_info.", default=i)
    meta: dict[str, Any] = {"format": "verl", "index": index, "source": stem}
    num_docs = c.integer("num_docs", extra, prefix="extra_info.")
    if num_docs is not None:
        meta["num_docs"] = num_docs
    if isinstance(c.record.get("data_source"), str):
        meta["data_source"] = c.record["data_source"]
    return Sample(id=f"{stem}-{index}", question=question, answers=answers, context=c.context(), meta=meta)


def _question_from_prompt(c: _Checker) -> str:
    prompt = c.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise c.fail("prompt", "expected a non-empty chat list (no extra_info.question either)")
    for message in reversed(prompt):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(content, str) and content.strip():
            return content
    raise c.fail("prompt", "no user message with text")


_BUILDERS = {"hotpotqa": _hotpotqa, "ruler": _ruler, "verl": _verl}


def records_to_samples(
    records: Iterable[dict[str, Any]], source: str = "<records>", fmt: str | None = None
) -> list[Sample]:
    """Validate and convert raw records; ``fmt`` forces a shape, else it is read off record 0."""
    records = list(records)
    if not records:
        raise DataError(source, "no records")
    stem = Path(source).stem if source != "<records>" else "sample"
    if fmt is None:
        fmt = detect_format(records[0])
        if fmt is None:
            raise DataError(
                source,
                f"unrecognised record shape with fields {sorted(map(str, records[0]))}; expected MemAgent HotpotQA "
                "{context, input, answers}, RULER {context, input, outputs, answer_prefix} or verl "
                "{context, prompt, reward_model, extra_info}",
                record=0,
            )
    if fmt not in _BUILDERS:
        raise DataError(source, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    build = _BUILDERS[fmt]
    samples = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(source, f"expected an object, got {type(record).__name__}", record=i)
        samples.append(build(_Checker(source, i, record), stem, i))
    return samples
