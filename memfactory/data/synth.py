"""Seeded, offline generators that write exactly MemAgent's public record shapes.

* ``hotpotqa`` — multi-hop questions over an invented knowledge base (people, cities,
  organisations, countries, rivers). Each question needs two gold documents linked by a bridge
  entity; they are shuffled among distractor documents from the same knowledge base and joined as
  MemAgent does: ``"Document {i}:\\n{title}\\n{text}"`` with blank lines between. The questions
  depend only on ``seed`` and ``n``, not on the number of documents, so ``docs=50`` and
  ``docs=200`` ask the same questions (as MemAgent's ``eval_{N}`` files do).
* ``fwe`` — RULER's frequent-words extraction: Zipf (alpha 2) counts over ``length // 50`` random
  6-letter words, the most frequent one replaced by ``...`` (noise), gold = the next three, the
  word count grown until the context reaches ``length`` tokens.
* ``docqa`` — the CPU learning task: 3-6 ``"Document i: <fact>"`` lines and one question about one
  fact with a short answer (a name, a city, a number).

Token lengths (``fwe``) are measured with the tokenizer you pass (a callable ``str -> int`` or
anything with ``encode``, e.g. a transformers tokenizer); without one a documented approximation
is used: one token per 4 characters, the same rule ``memfactory`` uses for backends without a
tokenizer.
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memfactory.data.synth_words import (
    COLOURS,
    DOCQA_CITIES,
    DOCQA_FIRST_NAMES,
    DOCQA_JOBS,
    INDUSTRIES,
    LANDMARKS,
    NAME_CODAS,
    NAME_ONSETS,
    NAME_VOWELS,
    ORG_KINDS,
    PETS,
    PROFESSIONS,
    TOPICS,
)

KINDS = ("hotpotqa", "fwe", "docqa")
CHARS_PER_TOKEN = 4


# --------------------------------------------------------------------------- token counting


def approx_tokens(text: str) -> int:
    """Tokens without a tokenizer: one per 4 characters (BPE on English is ~4 chars/token)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
    """A ``str -> int`` counter from a callable, a tokenizer with ``encode``, or None (approximation)."""
    if tokenizer is None:
        return approx_tokens
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    if callable(tokenizer):
        return lambda text: int(tokenizer(text))
    raise TypeError(f"tokenizer must be a callable or have .encode, got {type(tokenizer).__name__}")


# --------------------------------------------------------------------------- invented names


class _Names:
    """Unique pronounceable invented names, so no fact can come from a model's world knowledge."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        parts = [
            self.rng.choice(NAME_ONSETS) + self.rng.choice(NAME_VOWELS) + self.rng.choice(NAME_CODAS)
            for _ in range(syllables)
        ]
        return "".join(parts).capitalize()

    def unique(self, make: Callable[[], str]) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("ran out of invented names")

    def person(self) -> str:
        return self.unique(lambda: f"{self.word(2)} {self.word(self.rng.choice([2, 3]))}")

    def place(self) -> str:
        return self.unique(lambda: self.word(self.rng.choice([2, 3])))

    def org(self) -> str:
        kind = self.rng.choice(ORG_KINDS)
        return self.unique(lambda: f"{self.word(2)} {kind}")


def _knowledge_base(
    rng: random.Random, names: _Names, people: int, cities: int, orgs: int, countries: list[str]
) -> dict:
    kb: dict[str, dict[str, dict[str, Any]]] = {"country": {}, "city": {}, "person": {}, "org": {}}
    for country in countries:
        kb["country"].setdefault(country, {"name": country})
    for _ in range(cities):
        name = names.place()
        kb["city"][name] = {
            "name": name,
            "country": rng.choice(countries),
            "river": names.place() + " River",
            "population": rng.randrange(20, 900) * 1000,
            "landmark": rng.choice(LANDMARKS),
            "founded": rng.randrange(900, 1700),
        }
    city_names = list(kb["city"])
    for _ in range(people):
        name = names.person()
        kb["person"][name] = {
            "name": name,
            "born": rng.randrange(1850, 1990),
            "city": rng.choice(city_names),
            "profession": rng.choice(PROFESSIONS),
            "topic": rng.choice(TOPICS),
            "pronoun": rng.choice(["He", "She"]),
        }
    person_names = list(kb["person"])
    for _ in range(orgs):
        name = names.org()
        kb["org"][name] = {
            "name": name,
            "founder": rng.choice(person_names),
            "city": rng.choice(city_names),
            "year": rng.randrange(1880, 2015),
            "industry": rng.choice(INDUSTRIES),
            "staff": rng.randrange(40, 9000),
        }
    return kb


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _document(kind: str, e: dict[str, Any]) -> str:
    """``"{title}\\n{text}"``. Each relation is stated in exactly one document, so bridges need two hops."""
    if kind == "person":
        p = e["pronoun"]
        pos = "His" if p == "He" else "Her"
        text = (
            f"{e['name']} (born {e['born']}) is {_a(e['profession'])} from the city of {e['city']}. "
            f"{p} is known for work on {e['topic']}, which was published in several collections. "
            f"{pos} early training took place under a local master, and {p.lower()} later taught for some years. "
            f"Critics have described {pos.lower()} style as patient and exact."
        )
    elif kind == "city":
        text = (
            f"{e['name']} is a city in {e['country']} with a population of about {e['population']:,}. "
            f"The {e['river']} runs through its centre. The city was first recorded in {e['founded']} and is known "
            f"for {e['landmark']}. Its economy rests on trade, small workshops and a weekly market."
        )
    elif kind == "org":
        text = (
            f"{e['name']} is {_a(e['industry'])} company founded in {e['year']} by {e['founder']}. "
            f"It is headquartered in {e['city']} and employs around {e['staff']:,} people. "
            f"The company grew from a single workshop and now sells to customers in many regions."
        )
    else:  # country
        text = (
            f"{e['name']} is a small country with a long coastline and a parliamentary government. "
            f"Its flag shows three horizontal bands, and its national holiday falls in late spring."
        )
    return f"{e['name']}\n{text}"


# question templates: (first kind, relation to the bridge, bridge kind, fact of the bridge, question text)
_HOPS = [
    ("org", "founder", "person", "city", "In which city was the founder of {x} born?"),
    ("org", "founder", "person", "profession", "What is the profession of the founder of {x}?"),
    ("org", "founder", "person", "born", "In what year was the founder of {x} born?"),
    ("org", "city", "city", "country", "In which country is {x} headquartered?"),
    ("org", "city", "city", "river", "Which river runs through the city where {x} is headquartered?"),
    ("person", "city", "city", "river", "Which river runs through the birthplace of {x}?"),
    ("person", "city", "city", "country", "In which country was {x} born?"),
]


def gen_hotpotqa(n: int = 128, seed: int = 0, docs: int = 50) -> list[dict[str, Any]]:
    """``n`` multi-hop questions, each among ``docs`` documents (2 gold + distractors)."""
    if docs < 2:
        raise ValueError("docs must be at least 2 (two gold documents per question)")
    rng = random.Random(seed)
    names = _Names(rng)
    countries = [names.place() for _ in range(12)]
    # The core KB and the questions depend on (seed, n) only; filler entities are added for large `docs`.
    kb = _knowledge_base(rng, names, people=max(8, n), cities=max(6, n // 2 + 4), orgs=max(6, n), countries=countries)
    questions = []
    for index in range(n):
        first_kind, relation, bridge_kind, fact, template = rng.choice(_HOPS)
        first = kb[first_kind][rng.choice(sorted(kb[first_kind]))]
        bridge = kb[bridge_kind][first[relation]]
        answer = str(bridge[fact])
        questions.append(
            (
                index,
                template.format(x=first["name"]),
                answer,
                (first_kind, first["name"]),
                (bridge_kind, bridge["name"]),
            )
        )
    pool = [(kind, name) for kind in ("person", "city", "org", "country") for name in kb[kind]]
    if len(pool) < docs:
        filler_rng = random.Random(f"{seed}-filler-{docs}")
        filler_names = _Names(filler_rng)
        filler_names.used = set(names.used)  # never reuse a name with different facts
        extra = _knowledge_base(
            filler_rng,
            filler_names,
            people=docs // 3 + 1,
            cities=docs // 3 + 1,
            orgs=docs // 3 + 1,
            countries=countries,
        )
        for kind in ("person", "city", "org"):
            for name, entity in extra[kind].items():
                kb[kind][name] = entity
                pool.append((kind, name))
    records = []
    for index, question, answer, gold_a, gold_b in questions:
        qrng = random.Random(f"{seed}-{index}-{docs}")
        distractors = [key for key in pool if key not in (gold_a, gold_b)]
        chosen = [gold_a, gold_b] + qrng.sample(distractors, min(docs - 2, len(distractors)))
        qrng.shuffle(chosen)
        context = "\n\n".join(
            f"Document {i}:\n{_document(kind, kb[kind][name])}" for i, (kind, name) in enumerate(chosen, 1)
        )
        records.append(
            {"context": context, "input": question, "answers": [answer], "num_docs": len(chosen), "index": index}
        )
    return records


# --------------------------------------------------------------------------- RULER fwe

# RULER's freq_words_extraction template, split into MemAgent's context / input / answer_prefix.
FWE_INSTRUCTION = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words."
)
FWE_QUESTION = (
    "Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_INPUT = f"{FWE_INSTRUCTION} {FWE_QUESTION}"
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
ZETA_2 = math.pi**2 / 6


def _fwe_text(vocab: list[str], num_words: int, alpha: float, rng: random.Random) -> str:
    counts = [int(num_words * (k**-alpha) / ZETA_2) for k in range(1, len(vocab) + 1)]
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    rng.shuffle(words)
    return " ".join(words)


def gen_fwe(
    n: int = 128, seed: int = 0, length: int = 16384, tokenizer: Any = None, alpha: float = 2.0, word_len: int = 6
) -> list[dict[str, Any]]:
    """RULER fwe records whose ``context`` (coded text) is as long as fits in ``length`` tokens."""
    if length < 64:
        raise ValueError("length must be at least 64 tokens")
    count = token_counter(tokenizer)
    vocab_size = max(8, length // 50)
    records = []
    for index in range(n):
        rng = random.Random(f"fwe-{seed}-{index}")
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choice(string.ascii_lowercase) for _ in range(word_len)))
        ordered = sorted(vocab)
        rng.shuffle(ordered)
        ordered[0] = "...."  # the most frequent "word" is noise, as in RULER
        gold = ordered[1:4]
        shuffle_seed = rng.randrange(2**32)

        def text_for(words: int, vocab_order: list[str] = ordered, shuffle: int = shuffle_seed) -> str:
            return _fwe_text(vocab_order, words, alpha, random.Random(shuffle))

        # The largest word count whose text fits (RULER grows it in steps; a bisection is the same result).
        low, high = 4, max(8, length)
        while count(text_for(high)) <= length:
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            if count(text_for(mid)) <= length:
                low = mid
            else:
                high = mid
        context = text_for(low)
        records.append(
            {
                "index": index,
                "input": FWE_INPUT,
                "context": context,
                "outputs": gold,
                "answer_prefix": FWE_ANSWER_PREFIX,
                "length": count(context),
            }
        )
    return records


# --------------------------------------------------------------------------- docqa (CPU demo)


# relation -> (fact template, question template, value source)
_DOCQA = {
    "city": ("{p} lives in {v}.", "Where does {p} live?", DOCQA_CITIES),
    "job": ("{p} works as {av}.", "What is {p}'s job?", DOCQA_JOBS),
    "age": ("{p} is {v} years old.", "How old is {p}?", None),
    "colour": ("{p}'s favourite colour is {v}.", "What is {p}'s favourite colour?", COLOURS),
    "pet": ("{p} has a pet {v}.", "What pet does {p} have?", PETS),
}


def gen_docqa(n: int = 64, seed: int = 0, min_docs: int = 3, max_docs: int = 6) -> list[dict[str, Any]]:
    """Short document QA: a few one-line facts about different people, one question, a one-word answer."""
    most = min(len(DOCQA_FIRST_NAMES), 90 - 18)  # one person per document; ages are distinct numbers in [18, 90)
    if not 1 <= min_docs <= max_docs <= most:
        raise ValueError(
            f"docqa needs 1 <= min_docs <= max_docs <= {most}, got min_docs={min_docs}, max_docs={max_docs}"
        )
    records = []
    for index in range(n):
        rng = random.Random(f"docqa-{seed}-{index}")
        k = rng.randint(min_docs, max_docs)
        people = rng.sample(DOCQA_FIRST_NAMES, k)
        relation = rng.choice(sorted(_DOCQA))
        fact, question, values = _DOCQA[relation]
        if values is None:
            picked = [str(v) for v in rng.sample(range(18, 90), k)]
        else:
            picked = [rng.choice(values) for _ in range(k)]
        facts = []
        for person, value in zip(people, picked):
            # Mix in facts of other relations so the matching relation is not the only one on display.
            if person != people[0] and rng.random() < 0.35:
                other = rng.choice([r for r in sorted(_DOCQA) if r != relation])
                ofact, _, ovalues = _DOCQA[other]
                ovalue = str(rng.choice(ovalues) if ovalues else rng.randrange(18, 90))
                facts.append(ofact.format(p=person, v=ovalue, av=_a(ovalue)))
            else:
                facts.append(fact.format(p=person, v=value, av=_a(value)))
        target = people[0]
        answer = picked[0]
        rng.shuffle(facts)
        context = "\n".join(f"Document {i}: {line}" for i, line in enumerate(facts, 1))
        records.append(
            {"context": context, "input": question.format(p=target), "answers": [answer], "num_docs": k, "index": index}
        )
    return records


# --------------------------------------------------------------------------- entry points


def synth_dataset(kind: str, n: int, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """Records of one synthetic kind (``hotpotqa``, ``fwe``, ``docqa``) in MemAgent's JSON shape."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if kind == "hotpotqa":
        return gen_hotpotqa(n=n, seed=seed, **kw)
    if kind == "fwe":
        return gen_fwe(n=n, seed=seed, **kw)
    if kind == "docqa":
        return gen_docqa(n=n, seed=seed, **kw)
    raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {', '.join(KINDS)}")


def write_json(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as a JSON list (``.json``) or one record a line (``.jsonl``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        if path.suffix == ".jsonl":
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            json.dump(records, fh, ensure_ascii=False, indent=1)
    tmp.replace(path)
    return path
