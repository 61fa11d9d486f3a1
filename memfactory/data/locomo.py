"""LoCoMo-format conversations: read and check them, generate a seeded synthetic set, download the real one.

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

The synthetic generator writes the same shape: two invented people chat over several sessions and
their facts change (one moves city, changes a favourite food, loses a pet), so a memory manager
needs UPDATE and DELETE, not just ADD. Its categories: 4 = a current fact (single-hop), 2 = when
something changed (temporal), 3 = what a fact was before it changed, 1 = a fact reached through
another (multi-hop), 5 = never mentioned (adversarial).
"""

from __future__ import annotations

import json
import os
import random
import re
from datetime import date, timedelta
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


# --------------------------------------------------------------------------- synthetic conversations

_FIRST = [
    "Ava",
    "Ben",
    "Cleo",
    "Dario",
    "Esme",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonah",
    "Kira",
    "Luca",
    "Mira",
    "Nils",
    "Orla",
    "Pavel",
    "Rosa",
    "Soren",
    "Tess",
    "Ugo",
    "Vera",
    "Wren",
    "Yusuf",
    "Zoe",
]
_FOODS = ["dumplings", "lasagna", "sushi", "tacos", "curry", "paella", "ramen", "falafel", "risotto", "pho"]
_HOBBIES = ["pottery", "climbing", "chess", "gardening", "rowing", "knitting", "archery", "birdwatching"]
_JOBS = ["nurse", "architect", "baker", "pilot", "teacher", "librarian", "carpenter", "chemist"]
_PETS = ["dog", "cat", "parrot", "rabbit"]
_PET_NAMES = ["Biscuit", "Pepper", "Mango", "Ziggy", "Nova", "Toffee", "Luna", "Rocket", "Juno", "Olive"]
_CITIES = [
    "Tholand",
    "Brevik",
    "Maraston",
    "Quillan",
    "Dunmere",
    "Caldor",
    "Ostrava",
    "Pelham",
    "Vinterby",
    "Larkhaven",
    "Rosmoor",
    "Ashby",
]
_FILLER = [  # (question, reply, LoCoMo-style observation of the reply with {a} asking and {b} replying)
    ("How has your week been?", "Busy but good, thanks for asking.", "{b} had a busy but good week."),
    (
        "Did you do anything fun at the weekend?",
        "Mostly relaxed at home, it was nice.",
        "{b} relaxed at home at the weekend.",
    ),
    (
        "The weather has been strange lately.",
        "Yes, sunny one day and rainy the next.",
        "{b} noticed the weather changing from sunny to rainy.",
    ),
    (
        "Have you read anything good recently?",
        "A short mystery novel, quite gripping.",
        "{b} read a gripping short mystery novel.",
    ),
    (
        "I finally cleaned out my garage.",
        "That always feels great once it is done.",
        "{b} thinks a cleaned-out garage feels great.",
    ),
    ("Work has been hectic this month.", "I hope it calms down for you soon.", "{b} hopes work calms down for {a}."),
]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _when(day: date, rng: random.Random) -> tuple[str, str]:
    """LoCoMo's session time format and the short date used in answers."""
    hour, minute = rng.randrange(1, 12), rng.randrange(0, 60)
    half = rng.choice(["am", "pm"])
    long = f"{hour}:{minute:02d} {half} on {day.day} {_MONTHS[day.month - 1]}, {day.year}"
    return long, f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def _conversation(rng: random.Random, index: int, sessions: int) -> dict[str, Any]:
    a, b = rng.sample(_FIRST, 2)
    cities = rng.sample(_CITIES, 3)
    foods = rng.sample(_FOODS, 2)
    pet_kind, pet_name = rng.choice(_PETS), rng.choice(_PET_NAMES)
    hobby_b, job_a, job_b = rng.choice(_HOBBIES), *rng.sample(_JOBS, 2)
    sessions = max(3, sessions)
    day = date(2023, rng.randrange(1, 10), rng.randrange(1, 28))
    plan: list[list[tuple[str, str, str | None]]] = [[] for _ in range(sessions)]  # (speaker, text, fact tag)
    # Session 1: the starting facts.
    plan[0] += [
        (a, f"I live in {cities[0]} now, close to the old harbour.", "city0"),
        (b, f"Nice! My {pet_kind} {pet_name} would love the harbour walks.", "pet"),
        (a, f"My favourite food has always been {foods[0]}.", "food0"),
        (b, f"I spend most Sundays on {hobby_b}, it keeps me calm.", "hobby"),
    ]
    plan[1] += [
        (a, f"I started a new job as a {job_a} this week.", "job_a"),
        (b, f"Congratulations! I have been working as a {job_b} for years.", "job_b"),
    ]
    move = rng.randrange(1, sessions)
    plan[move].append((a, f"Big news: I moved from {cities[0]} to {cities[1]} last weekend.", "city1"))
    change = rng.randrange(1, sessions)
    plan[change].append((a, f"These days I prefer {foods[1]} over {foods[0]}, funny how tastes change.", "food1"))
    loss = sessions - 1
    plan[loss].append((b, f"Sadly I had to give {pet_name} away, so I do not have a {pet_kind} anymore.", "pet_gone"))

    # LoCoMo's annotated observations: each fact in the third person, with the turn it comes from.
    facts = {
        "city0": f"{a} lives in {cities[0]}.",
        "pet": f"{b} has a {pet_kind} named {pet_name}.",
        "food0": f"{a}'s favourite food is {foods[0]}.",
        "hobby": f"{b} spends most Sundays on {hobby_b}.",
        "job_a": f"{a} started a new job as a {job_a}.",
        "job_b": f"{b} works as a {job_b}.",
        "city1": f"{a} moved from {cities[0]} to {cities[1]}.",
        "food1": f"{a} now prefers {foods[1]} over {foods[0]}.",
        "pet_gone": f"{b} gave {pet_name} away and no longer has a {pet_kind}.",
    }
    observation: dict[str, dict[str, list[list[str]]]] = {}
    conversation: dict[str, Any] = {"speaker_a": a, "speaker_b": b}
    evidence: dict[str, str] = {}
    dates: dict[str, str] = {}
    for s in range(sessions):
        long, short = _when(day, rng)
        day += timedelta(days=rng.randrange(5, 20))
        conversation[f"session_{s + 1}_date_time"] = long
        ask, reply, chat = rng.choice(_FILLER)
        facts["chat"] = chat.format(a=a, b=b)
        turns_spec = [(a, ask, None), (b, reply, "chat"), *plan[s]]
        turns = []
        observed: dict[str, list[list[str]]] = {}
        for t, (speaker, text, tag) in enumerate(turns_spec):
            dia = f"D{s + 1}:{t + 1}"
            turns.append({"speaker": speaker, "dia_id": dia, "text": text})
            if tag:
                if tag != "chat":
                    evidence[tag], dates[tag] = dia, short
                observed.setdefault(speaker, []).append([facts[tag], dia])
        conversation[f"session_{s + 1}"] = turns
        observation[f"session_{s + 1}_observation"] = observed

    qa = [
        {
            "question": f"Which city does {a} live in now?",
            "answer": cities[1],
            "evidence": [evidence["city1"]],
            "category": 4,
        },
        {
            "question": f"What is {a}'s favourite food now?",
            "answer": foods[1],
            "evidence": [evidence["food1"]],
            "category": 4,
        },
        {"question": f"What does {a} work as?", "answer": job_a, "evidence": [evidence["job_a"]], "category": 4},
        {
            "question": f"What hobby does {b} do on Sundays?",
            "answer": hobby_b,
            "evidence": [evidence["hobby"]],
            "category": 4,
        },
        {
            "question": f"Does {b} still have a {pet_kind}?",
            "answer": "No",
            "evidence": [evidence["pet_gone"]],
            "category": 4,
        },
        {
            "question": f"When did {a} move to {cities[1]}?",
            "answer": dates["city1"],
            "evidence": [evidence["city1"]],
            "category": 2,
        },
        {
            "question": f"Which city did {a} live in before moving?",
            "answer": cities[0],
            "evidence": [evidence["city0"], evidence["city1"]],
            "category": 3,
        },
        {
            "question": f"What was the name of {b}'s {pet_kind}?",
            "answer": pet_name,
            "evidence": [evidence["pet"]],
            "category": 1,
        },
        {"question": f"What is {b}'s favourite food?", "adversarial_answer": foods[0], "evidence": [], "category": 5},
    ]
    return {"sample_id": f"synth-{index}", "conversation": conversation, "observation": observation, "qa": qa}


def synth_locomo(n: int = 4, seed: int = 0, sessions: int = 4) -> list[dict[str, Any]]:
    """``n`` seeded LoCoMo-shaped conversations (``sessions`` sessions each, at least 3)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"locomo/{seed}")
    return [_conversation(rng, i, sessions) for i in range(n)]


def write_locomo(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


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
    "synth_locomo",
    "transcript",
    "write_locomo",
]
