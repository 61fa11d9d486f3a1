"""Build MemAgent's HotpotQA eval sets (``eval_{N}.json``) from a raw HotpotQA dev file, offline.

MemAgent publishes its eval files only on a model hub; the raw dev set is mirrored widely. Its
recipe (``taskutils/memory_data/`` of github.com/BytedTsinghua-SIA/MemAgent), as done here:

1. ``processing.py`` ``read_hotpotqa``: the **pool** is every paragraph of every question in the
   file, as ``"{title}\\n{''.join(sentences)}"``, de-duplicated and sorted (Python string order);
   each question keeps the pool ids of its own paragraphs in its record's order; answers are
   ``[answer]``.
2. ``processing.py`` takes the file's first 200 questions; ``filter.py``/``filter2.py`` drop those
   Qwen2.5-7B (base or instruct) answers without any context and keep the first 128 of the rest
   (``--candidates``, ``--filter-model``, ``--n`` of ``memfactory data build``).
3. ``different_docs_eval.py`` ``generate_input_output``, for each size N: the question's own
   paragraphs plus ``random.sample`` of N - own pool ids that are not its own, from Python's
   ``random`` seeded 42; then ``random.Random(4).shuffle``; documents joined as
   ``"Document {i}:\\n{doc}"`` with blank lines between; the record ``{context, input, answers,
   num_docs, index}`` (``index`` = the question's position in the dev file); the list written by
   ``json.dump(records, indent=4, ensure_ascii=False)``.

Where exact reproduction is impossible (docs/hotpotqa.md says more): MemAgent ran step 3 in a pool
of forked workers (one per CPU), each starting from the seed-42 state and taking questions as the
scheduler handed them out, so its distractors depend on its machine's CPU count and timing. Here
one generator seeded ``seed`` per size draws for the questions in order -- exactly MemAgent's
script run with one worker. Its 7B no-context filter is replaced by any model you name (or none:
the first ``n`` questions). Sizes above 10000 documents (where MemAgent writes pool ids instead of
text) are refused.

Memory stays bounded on the 46 MB dev set: records stream in one at a time
(:mod:`memfactory.data.hotpotqa_raw`) and the pool lives in a scratch SQLite file, sorted there;
memory holds the candidate questions and the pool's ids, not its text.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from memfactory.data.hotpotqa_raw import RawQuestion, iter_questions
from memfactory.errors import DataError, MemFactoryError
from memfactory.sqlite import sqlite_errors

MEMAGENT_SEED = 42  # different_docs_eval.py: random.seed(42)
SHUFFLE_SEED = 4  # random.Random(4).shuffle(all_docs), the same fixed generator for every record
MEMAGENT_CANDIDATES = 200  # processing.py: the dev file's first 200 questions
MEMAGENT_QUESTIONS = 128  # filter2.py: head(128) of those the filter keeps
MEMAGENT_SIZES = (50, 100, 200, 400, 800, 1600, 3200, 6400)  # the inline-text sizes of its release
MAX_INLINE_DOCS = 10_000  # above this MemAgent writes pool ids, not text (generate_index_only)
DOCUMENT_PROMPT = "Document {i}:\n{document}"
_BATCH = 500  # pool ids per SQLite query


# --------------------------------------------------------------------------- the pool


class DocPool:
    """The file's unique paragraphs in a scratch SQLite file, ranked as ``sorted(set(docs))`` ranks them.

    SQLite's BINARY collation compares UTF-8 bytes, and UTF-8 byte order is code-point order, which
    is Python's string order: ``rank`` here is the index MemAgent's ``total_docs_dict`` gives.
    """

    def __init__(self, folder: Path):
        self.path = folder / "pool.sqlite"
        self.size = 0
        with self._errors("create the scratch pool"):
            self.conn = sqlite3.connect(str(self.path), isolation_level=None)
            self.conn.execute("PRAGMA journal_mode = OFF")
            self.conn.execute("PRAGMA synchronous = OFF")
            self.conn.execute("CREATE TABLE seen (text TEXT PRIMARY KEY)")
            self.conn.execute("BEGIN")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        with sqlite_errors(f"scratch pool {self.path}", action, path=self.path, timeout=0):
            yield

    def add(self, docs: Iterable[str]) -> None:
        with self._errors("add paragraphs"):
            self.conn.executemany("INSERT OR IGNORE INTO seen (text) VALUES (?)", ((d,) for d in docs))

    def seal(self, wanted: set[str]) -> dict[str, int]:
        """Rank the pool (no more ``add``); returns the rank of each text in ``wanted``."""
        with self._errors("sort the pool"):
            self.conn.execute("COMMIT")
            self.conn.execute("CREATE TABLE ranked (rank INTEGER PRIMARY KEY, text TEXT NOT NULL)")
            self.conn.execute(
                "INSERT INTO ranked (rank, text) SELECT row_number() OVER (ORDER BY text) - 1, text FROM seen"
            )
            self.conn.execute("DROP TABLE seen")
            ranks = {}
            for rank, text in self.conn.execute("SELECT rank, text FROM ranked ORDER BY rank"):
                if text in wanted:
                    ranks[text] = rank
            self.size = self.conn.execute("SELECT count(*) FROM ranked").fetchone()[0]
        return ranks

    def texts(self, ranks: list[int]) -> list[str]:
        """The paragraphs at ``ranks``, in that order."""
        found: dict[int, str] = {}
        unique = sorted(set(ranks))
        with self._errors("read paragraphs"):
            for start in range(0, len(unique), _BATCH):
                part = unique[start : start + _BATCH]
                marks = ",".join("?" * len(part))
                found.update(self.conn.execute(f"SELECT rank, text FROM ranked WHERE rank IN ({marks})", part))
        return [found[rank] for rank in ranks]

    def close(self) -> None:
        self.conn.close()


@dataclass
class DevSet:
    """A streamed dev file: its pool and its first ``candidates`` questions with their pool ids."""

    file: str
    pool: DocPool
    questions: list[RawQuestion]
    own: dict[int, list[int]] = field(default_factory=dict)  # question index -> pool ids of its paragraphs
    records: int = 0
    paragraphs: int = 0


@contextmanager
def open_dev(path: str | Path, *, candidates: int = MEMAGENT_CANDIDATES, workdir: str | Path | None = None):
    """Stream ``path`` once into a :class:`DevSet` (the pool in a scratch folder, removed on exit)."""
    if candidates < 1:
        raise MemFactoryError(f"--candidates must be at least 1, got {candidates}")
    with tempfile.TemporaryDirectory(prefix="memfactory-hotpotqa-", dir=workdir) as folder:
        pool = DocPool(Path(folder))
        try:
            dev = DevSet(file=str(path), pool=pool, questions=[])
            for question in iter_questions(path):
                dev.records += 1
                dev.paragraphs += len(question.docs)
                pool.add(question.docs)
                if len(dev.questions) < candidates:
                    dev.questions.append(question)
            ranks = pool.seal({doc for q in dev.questions for doc in q.docs})
            dev.own = {q.index: [ranks[doc] for doc in q.docs] for q in dev.questions}
            yield dev
        finally:
            pool.close()


def choose(dev: DevSet, n: int = MEMAGENT_QUESTIONS, drop: Iterable[int] = ()) -> list[RawQuestion]:
    """The first ``n`` candidate questions whose index is not in ``drop`` (filter2.py's ``head(128)``)."""
    if n < 1:
        raise MemFactoryError(f"--n must be at least 1, got {n}")
    dropped = set(drop)
    kept = [q for q in dev.questions if q.index not in dropped]
    if len(kept) < n:
        raise MemFactoryError(
            f"{dev.file}: {n} questions asked, but only {len(kept)} of the first {len(dev.questions)} "
            f"are left ({len(dropped)} dropped by the filter, {dev.records} records in the file); "
            "lower --n or raise --candidates"
        )
    return kept[:n]


# --------------------------------------------------------------------------- MemAgent's records


class Others(Sequence[int]):
    """``[i for i in range(size) if i not in own]`` -- the population MemAgent samples distractors
    from -- indexed lazily: ``random.sample`` reads only ``len`` and the items it picks, so it draws
    the same ids as from the list, without a 66635-long list per question and size."""

    def __init__(self, size: int, own: Iterable[int]):
        self.size = size
        self.skip = sorted(set(own))

    def __len__(self) -> int:
        return self.size - len(self.skip)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(j)
        for s in self.skip:  # the j-th id not skipped: step over every skipped id at or below it
            if s > j:
                break
            j += 1
        return j


def eval_record(question: RawQuestion, own: list[int], num_docs: int, pool: DocPool, rng: random.Random) -> dict:
    """``different_docs_eval.generate_input_output`` for one question and one size (HotpotQA: no
    ``more_context``); ``rng`` is the size's seeded generator, consumed in question order."""
    need = num_docs - len(own)
    if need < 0:
        raise MemFactoryError(f"eval_{num_docs} is smaller than question {question.index}'s own {len(own)} paragraphs")
    chosen = own + rng.sample(Others(pool.size, own), need)
    random.Random(SHUFFLE_SEED).shuffle(chosen)
    docs = pool.texts(chosen)
    context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(docs))
    return {
        "context": context,
        "input": question.question,
        "answers": [question.answer],
        "num_docs": num_docs,
        "index": question.index,
    }


def dump_array(records: Iterable[dict[str, Any]], fh: TextIO) -> int:
    """Write ``records`` exactly as ``json.dump(list(records), fh, ensure_ascii=False, indent=4)``
    would, one record at a time (a large set is never whole in memory); returns the count."""
    count = 0
    for record in records:
        fh.write("[\n" if count == 0 else ",\n")
        body = json.dumps(record, ensure_ascii=False, indent=4)
        fh.write("\n".join("    " + line for line in body.split("\n")))
        count += 1
    fh.write("[]" if count == 0 else "\n]")
    return count


def check_sizes(dev: DevSet, questions: list[RawQuestion], sizes: Iterable[int]) -> list[int]:
    """The sizes, refused before anything is written when one cannot be built."""
    sizes = list(dict.fromkeys(sizes))
    if not sizes:
        raise MemFactoryError("no --sizes given")
    most_own = max(len(dev.own[q.index]) for q in questions)
    for size in sizes:
        if size > MAX_INLINE_DOCS:
            raise MemFactoryError(
                f"eval_{size}: above {MAX_INLINE_DOCS} documents MemAgent stores pool ids instead of text, "
                "which no loader here reads; build sizes up to 10000"
            )
        if size >= dev.pool.size:
            raise DataError(
                dev.file,
                f"eval_{size} needs {size} documents, but the pool holds only {dev.pool.size} unique paragraphs "
                f"({dev.records} questions); sizes must be smaller than the pool",
            )
        if size < most_own:
            raise MemFactoryError(f"eval_{size}: a chosen question has {most_own} paragraphs of its own")
    return sizes


def build_eval_sets(
    dev: DevSet,
    questions: list[RawQuestion],
    sizes: Iterable[int],
    out_dir: str | Path,
    *,
    seed: int = MEMAGENT_SEED,
) -> list[Path]:
    """``eval_{N}.json`` for every size in ``out_dir``. All files appear together at the end; on any
    error none does (and no half-written file is left)."""
    sizes = check_sizes(dev, questions, sizes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path]] = []
    try:
        for size in sizes:
            final = out_dir / f"eval_{size}.json"
            tmp = final.with_name(final.name + ".tmp")
            done.append((tmp, final))
            rng = random.Random(seed)  # each size starts from the seeded state (a freshly forked worker)
            records = (eval_record(q, dev.own[q.index], size, dev.pool, rng) for q in questions)
            with tmp.open("w", encoding="utf-8") as fh:
                dump_array(records, fh)
        for tmp, final in done:
            tmp.replace(final)
    except OSError as exc:
        raise MemFactoryError(f"cannot write the eval sets in {out_dir}: {exc}") from exc
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
    return [final for _, final in done]
