"""LoCoMo-format conversations: read and check them, download the real one.

Which file or ``synthetic://locomo`` URI to read is :mod:`memfactory.data.sources`' business.

LoCoMo (snap-research/locomo, ``data/locomo10.json``) is a list of conversations::

    {"sample_id": "conv-26",
     "conversation": {"speaker_a": "Caroline", "speaker_b": "Melanie",
                      "session_1_date_time": "1:56 pm on 8 May, 2023",
                      "session_1": [{"speaker": "Caroline", "dia_id": "D1:1", "text": "..."}, ...], ...},
     "observation": {"session_1_observation": {"Caroline": [["Caroline went to ...", "D1:3"], ...]}, ...},
     "qa": [{"question": "...", "answer": "...", "evidence": ["D1:3"], "category": 2}, ...]}

``observation`` (optional) holds LoCoMo's annotated facts, in the third person with the turn each
comes from; they land in ``session["observations"]`` and RMM can use them as its memories
(``memory_source: observations``, the LoCoMo paper's "observations as database" setting).

Categories: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial (unanswerable; the
item carries ``adversarial_answer`` instead of ``answer`` and is excluded by default).

Every QA item becomes one ``Sample``: ``context`` is the whole transcript as text (for agents that
just read it), ``answers=[str(answer)]`` and ``meta`` holds ``conversation_id``, ``category``,
``evidence``, ``speakers`` and ``sessions`` (``[{"session": n, "date_time": ..., "turns": [...]}]``),
which memory agents replay into their bank. ``meta["metric"] = "f1"`` makes ``memfactory eval``
score LoCoMo with token F1 (its usual metric), and ``meta["category"]`` lets it group by category.

:mod:`memfactory.data.synth_locomo` generates seeded conversations of the same shape.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from memfactory.errors import DataError, MemFactoryError
from memfactory.paths import is_file
from memfactory.types import Sample

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
UNANSWERABLE = "Not mentioned in the conversation"
LOCOMO_URL = "https://raw.githubusercontent.com/snap-research/locomo/main/data/locomo10.json"
_SESSION = re.compile(r"^session_(\d+)$")


# --------------------------------------------------------------------------- loading and checking


def read_locomo(path: str | Path) -> list[dict[str, Any]]:
    """The raw conversation records of a LoCoMo .json file (a list, or one conversation object)."""
    path = Path(path)
    name = str(path)
    if not is_file(path):
        raise DataError(name, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(name, f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DataError(name, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise DataError(name, "not readable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits, which Python refuses to parse
        raise DataError(name, f"not readable JSON: {str(exc)[:200]}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise DataError(name, "expected a non-empty JSON list of LoCoMo conversations")
    return data


def _need(file: str, index: int, conv: str, obj: Any, key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(file, f"conversation {conv!r} has no field {path!r}", record=index, field=path)
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(
            file,
            f"conversation {conv!r}: {path!r} must be {names}, got {type(value).__name__}",
            record=index,
            field=path,
        )
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                file, f"conversation {conv!r}: {path!r} is not valid Unicode text (a lone surrogate such as \\ud800)",
                record=index, field=path,
            ) from None
    return value


def parse_conversation(record: Any, file: str, index: int) -> dict[str, Any]:
    """A checked, normalised conversation: ``{id, speakers, sessions, qa}``; DataError names the gap."""
    if not isinstance(record, dict):
        raise DataError(file, f"expected a conversation object, got {type(record).__name__}", record=index)
    conv_id = str(record.get("sample_id", f"conv-{index}"))
    conversation = _need(file, index, conv_id, record, "conversation", "conversation", dict)
    speakers = [
        str(_need(file, index, conv_id, conversation, key, f"conversation.{key}", str))
        for key in ("speaker_a", "speaker_b")
    ]
    numbers = sorted(int(m.group(1)) for key in conversation if (m := _SESSION.match(key)))
    if not numbers:
        raise DataError(
            file, f"conversation {conv_id!r} has no 'session_<n>' lists", record=index, field="conversation.session_1"
        )
    sessions = []
    for n in numbers:
        key = f"session_{n}"
        turns_raw = _need(file, index, conv_id, conversation, key, f"conversation.{key}", list)
        when = _need(file, index, conv_id, conversation, f"{key}_date_time", f"conversation.{key}_date_time", str)
        turns = []
        for t, turn in enumerate(turns_raw):
            where = f"conversation.{key}[{t}]"
            if not isinstance(turn, dict):
                raise DataError(file, f"conversation {conv_id!r}: a turn must be an object", record=index, field=where)
            entry = {
                field: str(_need(file, index, conv_id, turn, field, f"{where}.{field}", (str, int)))
                for field in ("speaker", "dia_id", "text")
            }
            if turn.get("blip_caption"):  # LoCoMo's shared images come with a caption
                entry["text"] += f" [shares a photo: {turn['blip_caption']}]"
            turns.append(entry)
        sessions.append({"session": n, "date_time": when, "turns": turns})
    _attach_observations(record, sessions, file, index, conv_id)
    qa_raw = _need(file, index, conv_id, record, "qa", "qa", list)
    qa = []
    for q, item in enumerate(qa_raw):
        where = f"qa[{q}]"
        question = str(_need(file, index, conv_id, item, "question", f"{where}.question", str))
        category = _need(file, index, conv_id, item, "category", f"{where}.category", int)
        if category == 5 and "answer" not in item:
            answer = UNANSWERABLE
        else:
            answer = str(_need(file, index, conv_id, item, "answer", f"{where}.answer", (str, int, float)))
        evidence = item.get("evidence", [])
        if not isinstance(evidence, list):
            raise DataError(
                file, f"conversation {conv_id!r}: evidence must be a list", record=index, field=f"{where}.evidence"
            )
        entry = {"question": question, "answer": answer, "category": category, "evidence": [str(e) for e in evidence]}
        if "adversarial_answer" in item:
            entry["adversarial_answer"] = str(item["adversarial_answer"])
        qa.append(entry)
    return {"id": conv_id, "speakers": speakers, "sessions": sessions, "qa": qa}


def _attach_observations(
    record: dict[str, Any], sessions: list[dict[str, Any]], file: str, index: int, conv: str
) -> None:
    """LoCoMo's optional annotated facts (``observation.session_<n>_observation``: speaker ->
    ``[[fact, dia_id], ...]``) as ``session["observations"]``: ``[{speaker, text, dia_id}]``."""
    raw = record.get("observation")
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise DataError(
            file, f"conversation {conv!r}: 'observation' must be an object", record=index, field="observation"
        )
    for session in sessions:
        key = f"session_{session['session']}_observation"
        by_speaker = raw.get(key, {})
        where = f"observation.{key}"
        if not isinstance(by_speaker, dict):
            raise DataError(file, f"conversation {conv!r}: {where!r} must be an object", record=index, field=where)
        facts = []
        for speaker, entries in by_speaker.items():
            if not isinstance(entries, list):
                raise DataError(
                    file,
                    f"conversation {conv!r}: {where}.{speaker} must be a list",
                    record=index,
                    field=f"{where}.{speaker}",
                )
            for f, entry in enumerate(entries):
                spot = f"{where}.{speaker}[{f}]"
                if not (isinstance(entry, list) and entry and isinstance(entry[0], str)):
                    raise DataError(
                        file, f"conversation {conv!r}: {spot} must be [fact, dia_id]", record=index, field=spot
                    )
                source = entry[1] if len(entry) > 1 else ""
                dia_id = ",".join(map(str, source)) if isinstance(source, list) else str(source)
                facts.append({"speaker": str(speaker), "text": entry[0], "dia_id": dia_id})
        session["observations"] = facts


def transcript(sessions: list[dict[str, Any]]) -> str:
    """The conversation as plain text, one line a turn, a header per session."""
    lines = []
    for session in sessions:
        lines.append(f"[Session {session['session']}, {session['date_time']}]")
        lines += [f"{t['speaker']}: {t['text']}" for t in session["turns"]]
        lines.append("")
    return "\n".join(lines).strip()


def conversations_to_samples(
    conversations: list[dict[str, Any]],
    source: str,
    *,
    exclude_categories: tuple[int, ...] | list[int] = (5,),
) -> list[Sample]:
    """One Sample per QA item (categories in ``exclude_categories`` skipped)."""
    samples = []
    excluded = set(exclude_categories)
    for conv in conversations:
        text = transcript(conv["sessions"])
        for q, item in enumerate(conv["qa"]):
            if item["category"] in excluded:
                continue
            meta = {
                "source": source,
                "format": "locomo",
                "metric": "f1",  # LoCoMo's usual answer metric; `memfactory eval` reads meta["metric"]
                "conversation_id": conv["id"],
                "sample_id": conv["id"],
                "qa_index": q,
                "category": item["category"],
                "category_name": CATEGORIES.get(item["category"], str(item["category"])),
                "evidence": item["evidence"],
                "speakers": conv["speakers"],
                "sessions": conv["sessions"],
            }
            if "adversarial_answer" in item:
                meta["adversarial_answer"] = item["adversarial_answer"]
            samples.append(Sample(f"{conv['id']}/q{q}", item["question"], [item["answer"]], text, meta))
    return samples


def locomo_samples(
    records: list[Any], source: str, *, exclude_categories: tuple[int, ...] | list[int] = (5,)
) -> list[Sample]:
    """Raw conversation records (a file's or the generator's) checked and turned into Samples."""
    conversations = [parse_conversation(r, source, i) for i, r in enumerate(records)]
    samples = conversations_to_samples(conversations, source, exclude_categories=exclude_categories)
    if not samples:
        raise DataError(source, f"no QA items left after excluding categories {sorted(exclude_categories)}")
    return samples


def looks_like_locomo(path: str | Path) -> bool:
    """True for a .json file whose first record has a ``conversation`` (LoCoMo, not MemAgent records)."""
    text = str(path)
    if not text.lower().endswith(".json") or not is_file(text):
        return False
    try:
        data = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # ValueError covers JSONDecodeError
        return False
    first = data[0] if isinstance(data, list) and data else data
    return isinstance(first, dict) and "conversation" in first


# --------------------------------------------------------------------------- download


def download_locomo(to_dir: str | Path, url: str = LOCOMO_URL, timeout: float = 30.0) -> Path:
    """Fetch the public ``locomo10.json`` into ``to_dir``; one-line MemFactoryError when offline."""
    import httpx

    target = Path(to_dir) / "locomo10.json"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise MemFactoryError(
            f"cannot download LoCoMo: HF_HUB_OFFLINE is set. Unset it on a machine with internet access, "
            f"or copy locomo10.json (from {url}) into {target.parent} by hand."
        )
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MemFactoryError(
            f"could not download LoCoMo from {url} ({type(exc).__name__}: {first[:200]}); check the internet "
            f"connection, or copy locomo10.json into {target.parent} by hand"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(response.content)
    records = read_locomo(target)  # fail now, not during a run, if the file is not LoCoMo
    for i, record in enumerate(records):
        parse_conversation(record, str(target), i)
    return target


__all__ = [
    "CATEGORIES",
    "UNANSWERABLE",
    "conversations_to_samples",
    "download_locomo",
    "locomo_samples",
    "looks_like_locomo",
    "parse_conversation",
    "read_locomo",
    "transcript",
]
