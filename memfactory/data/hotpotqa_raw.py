"""Read a raw HotpotQA file one record at a time: the input of ``memfactory data build``.

MemAgent builds its eval sets from ``hotpot_dev_distractor_v1.json`` (7405 questions, 46 MB).
Loading that with ``json.load`` holds the whole parsed tree (every sentence its own string
object, several times the file's size); here ``ijson`` (yajl's C parser) yields one record at a
time, so memory holds one record, whatever the file's size.

Three record shapes are read, each turned into a :class:`RawQuestion` whose paragraphs are
``"{title}\\n{''.join(sentences)}"`` -- MemAgent's document text:

* the official file (``.json``, an array): ``{_id, question, answer, supporting_facts: [[title,
  sent_id]], context: [[title, [sentence, ...]]], type, level}``;
* the Hugging Face ``hotpot_qa`` export (``.json`` array or ``.jsonl``): ``context`` and
  ``supporting_facts`` as columns, ``{title: [...], sentences: [[...]]}`` and ``{title: [...],
  sent_id: [...]}``; same text, same order, so the same documents;
* IRCoT's processed JSONL (``processing_scripts/process_hotpotqa.py``, carried by IRCoT, Adaptive-RAG
  and others): ``{question_id, question_text, answers_objects: [{spans}], contexts: [{title,
  paragraph_text, is_supporting}]}``. IRCoT de-duplicated each question's paragraphs through a
  Python ``set`` (their order is lost), stripped them and cut them at 1000 words, so documents
  built from it are MemAgent-shaped but not MemAgent's exact files.

Every record is checked as it streams: a record that is not HotpotQA, a supporting paragraph
missing from its own context, truncated or malformed JSON are each a :class:`DataError` naming
the file, the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from memfactory.errors import DataError
from memfactory.paths import is_file
from memfactory.text import is_utf8_text

SHAPES = "the official hotpot_*_v1.json, the Hugging Face hotpot_qa export, or IRCoT's processed JSONL"


@dataclass(frozen=True)
class RawQuestion:
    """One HotpotQA question as MemAgent uses it."""

    index: int  # position in the file (MemAgent's ``index``)
    question: str
    answer: str
    docs: tuple[str, ...]  # its own paragraphs, "title\ntext", in the record's order
    supporting: tuple[str, ...]  # titles of its supporting paragraphs


def document(title: str, sentences: list[str]) -> str:
    """MemAgent's document text of one paragraph (``f"{t}\\n{''.join(p)}"``: HotpotQA's sentences
    carry their own leading spaces)."""
    return f"{title}\n{''.join(sentences)}"


def iter_questions(path: str | Path) -> Iterator[RawQuestion]:
    """Every record of ``path`` (``.json`` array or ``.jsonl``), checked, in file order."""
    path = Path(path)
    name = str(path)
    if not is_file(path):
        raise DataError(name, "file not found")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise DataError(name, f"unsupported file type {suffix or '(none)'!r}; expected .json or .jsonl ({SHAPES})")
    records = _jsonl_records(path) if suffix == ".jsonl" else _json_records(path)
    count = 0
    for index, record in records:
        yield parse_record(record, name, index)
        count += 1
    if count == 0:
        raise DataError(name, "the file holds no records")


def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    name = str(path)
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
        if not head:
            raise DataError(name, "the file is empty")
        if not head.startswith(b"["):
            raise DataError(name, f"expected a JSON array of HotpotQA records ({SHAPES}), got {head[:20]!r}...")
        fh.seek(0)
        index = 0
        try:
            for record in ijson.items(fh, "item", use_float=True):
                yield index, record
                index += 1
        except ijson.JSONError as exc:
            problem = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, ijson.IncompleteJSONError) and "premature EOF" in problem:
                problem = "the JSON ends early (a truncated file?)"
            raise DataError(name, f"malformed JSON: {problem}", record=index) from None


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    name = str(path)
    index = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(name, f"not UTF-8 text on line {lineno} ({exc.reason})", record=index) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                message = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
                raise DataError(name, f"malformed JSON on line {lineno}: {message}", record=index) from None
            yield index, record
            index += 1


# --------------------------------------------------------------------------- record shapes


class _Record:
    """Field access that names the file, record and field of whatever is wrong."""

    def __init__(self, file: str, index: int, record: Any):
        if not isinstance(record, dict):
            raise DataError(file, f"expected a JSON object, got {type(record).__name__}", record=index)
        self.file, self.index, self.record = file, index, record

    def fail(self, field: str, message: str) -> DataError:
        return DataError(self.file, message, record=self.index, field=field)

    def get(self, field: str, source: dict | None = None, prefix: str = "") -> Any:
        source = self.record if source is None else source
        if field not in source or source[field] is None:
            raise self.fail(prefix + field, f"missing field (not a HotpotQA record? expected {SHAPES})")
        return source[field]

    def text(self, value: Any, field: str, *, empty_ok: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {type(value).__name__}")
        if not is_utf8_text(value):
            raise self.fail(field, "not valid Unicode text (holds a lone surrogate such as \\ud800)")
        if not empty_ok and not value.strip():
            raise self.fail(field, "empty")
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list of strings, got {type(value).__name__}")
        return [self.text(item, field, empty_ok=True) for item in value]


def parse_record(record: Any, file: str, index: int) -> RawQuestion:
    """One record of any of the three shapes -> RawQuestion; DataError naming what is wrong."""
    rec = _Record(file, index, record)
    if "question_text" in record or "contexts" in record:
        return _ircot(rec)
    question = rec.text(rec.get("question"), "question")
    answer = rec.text(rec.get("answer"), "answer", empty_ok=True)
    paragraphs = _paragraphs(rec, rec.get("context"))
    supporting = _supporting_titles(rec, rec.get("supporting_facts"))
    return _checked(rec, question, answer, paragraphs, supporting, "supporting_facts")


def _paragraphs(rec: _Record, context: Any) -> list[tuple[str, list[str]]]:
    if isinstance(context, dict):  # the Hugging Face export: {title: [...], sentences: [[...], ...]}
        titles = rec.get("title", context, "context.")
        sentences = rec.get("sentences", context, "context.")
        if not isinstance(titles, list) or not isinstance(sentences, list) or len(titles) != len(sentences):
            raise rec.fail("context", "expected equal-length lists context.title and context.sentences")
        context = [[title, sents] for title, sents in zip(titles, sentences)]
    if not isinstance(context, list) or not context:
        raise rec.fail("context", f"expected a non-empty list of [title, sentences] paragraphs, got {_shape(context)}")
    out = []
    for k, item in enumerate(context):
        where = f"context[{k}]"
        if not isinstance(item, list) or len(item) != 2:
            raise rec.fail(where, f"expected a [title, sentences] pair, got {_shape(item)}")
        out.append((rec.text(item[0], f"{where}[0]"), rec.strings(item[1], f"{where}[1]")))
    return out


def _supporting_titles(rec: _Record, facts: Any) -> list[str]:
    if isinstance(facts, dict):  # the Hugging Face export: {title: [...], sent_id: [...]}
        facts = rec.get("title", facts, "supporting_facts.")
        if not isinstance(facts, list):
            raise rec.fail("supporting_facts.title", f"expected a list of titles, got {_shape(facts)}")
        return [rec.text(title, "supporting_facts.title") for title in facts]
    if not isinstance(facts, list) or not facts:
        raise rec.fail("supporting_facts", f"expected a non-empty list of [title, sentence id], got {_shape(facts)}")
    titles = []
    for k, fact in enumerate(facts):
        if not isinstance(fact, list) or len(fact) != 2:
            raise rec.fail(f"supporting_facts[{k}]", f"expected a [title, sentence id] pair, got {_shape(fact)}")
        titles.append(rec.text(fact[0], f"supporting_facts[{k}][0]"))
    return titles


def _ircot(rec: _Record) -> RawQuestion:
    question = rec.text(rec.get("question_text"), "question_text")
    answers = rec.get("answers_objects")
    if not isinstance(answers, list) or not answers or not isinstance(answers[0], dict):
        raise rec.fail("answers_objects", f"expected a list of answer objects, got {_shape(answers)}")
    spans = rec.get("spans", answers[0], "answers_objects[0].")
    if not isinstance(spans, list) or not spans:
        raise rec.fail("answers_objects[0].spans", f"expected a non-empty list, got {_shape(spans)}")
    answer = rec.text(spans[0], "answers_objects[0].spans[0]", empty_ok=True)
    contexts = rec.get("contexts")
    if not isinstance(contexts, list) or not contexts:
        raise rec.fail("contexts", f"expected a non-empty list of paragraphs, got {_shape(contexts)}")
    paragraphs, supporting = [], []
    for k, item in enumerate(contexts):
        if not isinstance(item, dict):
            raise rec.fail(f"contexts[{k}]", f"expected an object, got {_shape(item)}")
        title = rec.text(rec.get("title", item, f"contexts[{k}]."), f"contexts[{k}].title")
        text = rec.text(rec.get("paragraph_text", item, f"contexts[{k}]."), f"contexts[{k}].paragraph_text")
        paragraphs.append((title, [text]))
        if item.get("is_supporting") is True:
            supporting.append(title)
    if not supporting:
        raise rec.fail("contexts", "no paragraph has is_supporting: true")
    return _checked(rec, question, answer, paragraphs, supporting, "contexts")


def _checked(
    rec: _Record,
    question: str,
    answer: str,
    paragraphs: list[tuple[str, list[str]]],
    supporting: list[str],
    supporting_field: str,
) -> RawQuestion:
    titles = {title for title, _ in paragraphs}
    for title in supporting:
        if title not in titles:
            raise rec.fail(supporting_field, f"supporting paragraph {title!r} is not in the question's context")
    return RawQuestion(
        index=rec.index,
        question=question,
        answer=answer,
        docs=tuple(document(title, sentences) for title, sentences in paragraphs),
        supporting=tuple(dict.fromkeys(supporting)),
    )


def _shape(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__
