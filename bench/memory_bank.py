"""Benchmark of the memory bank: batched ADDs, top-10 search latency at 1k / 10k / 100k memories.

    OMP_NUM_THREADS=1 python bench/memory_bank.py            # full run, rewrites bench/RESULTS.md's section
    OMP_NUM_THREADS=1 python bench/memory_bank.py --quick    # small sizes, prints only

Search is compared, in the same run and over the same stored vectors, with a plain-Python-loop
cosine baseline (dot products of the unit vectors in a Python loop + heapq top-10). The 10k-ADD row
uses the real all-MiniLM-L6-v2; the 100k scale uses the hashing embedder (lexical, 256 dims) so the
bank can be built in seconds on 2 shared cores. Each number names the embedder it was measured with.
mem0's local store is measured only if ``mem0`` is importable; it is not installed here.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_section  # bench/common.py: this script's folder is on sys.path

from memfactory.memory import HashingEmbedder, MemoryStore, get_embedder

NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Niaj",
    "Olivia",
    "Peggy",
    "Rupert",
    "Sybil",
]
ACTIVITIES = (
    "hiking in the mountains",
    "playing chess",
    "baking sourdough bread",
    "swimming at dawn",
    "reading science fiction",
    "painting watercolours",
    "cycling to work",
    "learning Japanese",
    "growing tomatoes",
    "playing the cello",
    "running marathons",
    "watching old films",
)
PLACES = [
    "Paris",
    "Berlin",
    "Lisbon",
    "Osaka",
    "Denver",
    "Nairobi",
    "Oslo",
    "Lima",
    "Toronto",
    "Hanoi",
    "Cairo",
    "Perth",
]
TEMPLATES = (
    "{name} enjoys {activity} on weekends (note {i})",
    "{name} moved to {place} in {year} and works as an engineer (note {i})",
    "{name}'s favourite pastime is {activity}; started in {year} (note {i})",
    "Reminder {i}: {name} has a meeting in {place} on day {day}",
    "{name} is allergic to item {day} and avoids it since {year} (note {i})",
)
QUERIES = (
    "Which outdoor activity does {name} love?",
    "Where does {name} live now?",
    "What is {name} allergic to?",
    "When is {name}'s meeting in {place}?",
    "What hobby did {name} start in {year}?",
)


def memory_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        rng.choice(TEMPLATES).format(
            name=rng.choice(NAMES),
            activity=rng.choice(ACTIVITIES),
            place=rng.choice(PLACES),
            year=rng.randint(1990, 2025),
            day=rng.randint(1, 28),
            i=i,
        )
        for i in range(n)
    ]


def query_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [
        rng.choice(QUERIES).format(name=rng.choice(NAMES), place=rng.choice(PLACES), year=rng.randint(1990, 2025))
        + f" #{i}"
        for i in range(n)
    ]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def python_loop_top10(rows: list[list[float]], query: list[float], k: int = 10) -> list[int]:
    """The baseline: cosine (dot of unit vectors) in a Python loop, then heapq top-k."""
    scores = []
    for row in rows:
        dot = 0.0
        for a, b in zip(row, query):
            dot += a * b
        scores.append(dot)
    return heapq.nlargest(k, range(len(scores)), key=scores.__getitem__)


def build_bank(path: Path, embedder, texts: list[str], batch: int = 2000) -> tuple[MemoryStore, float]:
    store = MemoryStore(path, embedder=embedder)
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        store.add_many(texts[i : i + batch], scope="bench", actor="bench")
    return store, time.perf_counter() - start


def search_row(label: str, store: MemoryStore, queries: list[str], baseline_queries: int) -> dict:
    n = store.count()
    emb = store.embedder
    start = time.perf_counter()
    store.search_vector(emb.encode(["warm-up"])[0], 10)  # first search after writes builds the matrix
    cold = time.perf_counter() - start
    qvecs = emb.encode(queries)
    rank = [ms(t) for t in (timed(lambda v=v: store.search_vector(v, 10), 1)[0] for v in qvecs)]
    end_to_end = [ms(t) for t in (timed(lambda q=q: store.search(q, 10), 1)[0] for q in queries)]
    after_add = []
    for i, v in enumerate(qvecs[:5]):  # a write then a search: the cached matrix is extended, not reloaded
        start = time.perf_counter()
        store.add(f"bench memory written between searches {i}", scope="bench")
        store.search_vector(v, 10)
        after_add.append(ms(time.perf_counter() - start))
    matrix = store._matrix(None)
    rows = matrix.vectors_t.T.tolist()
    base = []
    for v in qvecs[:baseline_queries]:
        start = time.perf_counter()
        top = python_loop_top10(rows, v.tolist())
        base.append(ms(time.perf_counter() - start))
        ours = [h.item.id for h in store.search_vector(v, 10)]
        theirs = [matrix.ids[i] for i in top]
        if set(ours) != set(theirs):  # ties can reorder equal scores, the sets must agree
            scores = v @ matrix.vectors_t
            assert np.allclose(sorted(scores[[matrix.ids.index(i) for i in ours]]), sorted(scores[top]), atol=1e-5), (
                "numpy top-10 disagrees with the baseline"
            )
    return {
        "label": label,
        "n": n,
        "embedder": emb.name,
        "dim": emb.dim,
        "cold_ms": ms(cold),
        "rank_p50": statistics.median(rank),
        "rank_p95": float(np.percentile(rank, 95)),
        "e2e_p50": statistics.median(end_to_end),
        "add_search": statistics.median(after_add),
        "base_p50": statistics.median(base),
        "base_runs": len(base),
    }


def mem0_status() -> str:
    if importlib.util.find_spec("mem0") is None:
        return "not installed (mem0 is not a dependency; not measured)"
    return (
        "installed, but no comparison is implemented offline (mem0's default store needs an LLM and an embedding API)"
    )


def render(results: dict) -> str:
    lines = [
        "## Memory bank",
        "",
        (
            f"`python bench/memory_bank.py` — {results['date']}, OMP_NUM_THREADS={results['threads']}, "
            f"{results['cpus']} CPU cores visible, Python {results['python']}, numpy {np.__version__}, "
            f"SQLite {results['sqlite']}. Run once on a machine shared with other engineers' jobs "
            f"(load average at start {results['load'][0]:.2f}, at end {results['load_end'][0]:.2f}), so "
            "absolute times are noisy; the ratios are measured in the same run."
        ),
        "",
        "### Writes",
        "",
        "| what | embedder | memories | total s | per memory ms | memories/s |",
        "|---|---|---|---|---|---|",
    ]
    for w in results["writes"]:
        lines.append(
            f"| {w['what']} | {w['embedder']} | {w['n']} | {w['seconds']:.2f} | "
            f"{ms(w['seconds']) / w['n']:.3f} | {w['n'] / w['seconds']:.0f} |"
        )
    lines += [
        "",
        "### Top-10 search",
        "",
        "rank = `search_vector` (cached matrix, matrix-vector product + argpartition + fetch of the 10 rows);",
        "search() = end to end including embedding the query; cold = first search of a freshly built bank",
        "(loads the embedding matrix from SQLite); add()+search = one add() (embedding included) then a",
        "search, whose cached matrix is extended rather than reloaded; baseline = plain-Python-loop cosine +",
        "heapq over the same vectors.",
        "",
        "| memories | embedder (dim) | rank p50 ms | rank p95 ms | search() p50 ms | cold ms | add()+search ms | Python-loop p50 ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["search"]:
        lines.append(
            f"| {r['n']:,} | {r['embedder']} ({r['dim']}) | {r['rank_p50']:.2f} | {r['rank_p95']:.2f} | "
            f"{r['e2e_p50']:.2f} | {r['cold_ms']:.0f} | {r['add_search']:.1f} | {r['base_p50']:.0f} (n={r['base_runs']}) | "
            f"{r['base_p50'] / r['rank_p50']:.0f}x |"
        )
    big = [r for r in results["search"] if r["n"] >= 100_000]
    if big:
        r = big[0]
        verdict = "met" if r["rank_p50"] < 20 else "NOT met"
        lines += [
            "",
            (
                f"Target top-10 over 100k < 20 ms: **{verdict}** at the median (p50 {r['rank_p50']:.2f} ms, "
                f"p95 {r['rank_p95']:.2f} ms; {r['embedder']}, {r['dim']} dims, "
                f"OMP_NUM_THREADS={results['threads']})."
            ),
        ]
    lines += [
        "",
        "### Branching (GRPO rollouts)",
        "",
        "| bank | snapshot() to :memory: ms | restore() ms |",
        "|---|---|---|",
    ]
    for s in results["snapshots"]:
        lines.append(f"| {s['n']:,} memories ({s['embedder']}) | {s['snapshot_ms']:.1f} | {s['restore_ms']:.1f} |")
    lines += ["", f"mem0 local store: {results['mem0']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; print only, don't touch RESULTS.md")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000, 100_000] if not args.quick else [500, 2_000]
    minilm_n = 10_000 if not args.quick else 500
    queries = query_texts(50 if not args.quick else 10)
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "load": os.getloadavg(),
        "writes": [],
        "search": [],
        "snapshots": [],
        "mem0": mem0_status(),
    }
    texts = memory_texts(max(sizes))
    with tempfile.TemporaryDirectory(prefix="memfactory-bench-") as tmp:
        tmp_path = Path(tmp)
        minilm = get_embedder("minilm")
        minilm.encode(["warm-up"])

        # Writes: one add() per memory (one embedding call + one transaction each) vs batched add_many().
        single_n = 200 if not args.quick else 50
        store = MemoryStore(tmp_path / "single.db", embedder=minilm)
        start = time.perf_counter()
        for t in texts[:single_n]:
            store.add(t, scope="bench")
        results["writes"].append(
            {
                "what": "add() one at a time",
                "embedder": minilm.name,
                "n": single_n,
                "seconds": time.perf_counter() - start,
            }
        )
        store.close()
        mini_bank, seconds = build_bank(tmp_path / "minilm.db", minilm, texts[:minilm_n])
        results["writes"].append(
            {"what": "add_many() batches of 2000", "embedder": minilm.name, "n": minilm_n, "seconds": seconds}
        )
        print(f"wrote {minilm_n} MiniLM memories in {seconds:.1f}s", flush=True)

        # MiniLM search at the sizes it was built for (1k = a bank of the first 1k).
        small = mini_bank.snapshot()
        small.reset()
        small.add_many(texts[: sizes[0]], scope="bench")
        results["search"].append(search_row("minilm", small, queries, 20))
        results["search"].append(search_row("minilm", mini_bank, queries, 10))

        hashing = HashingEmbedder(256)
        for n in sizes:
            bank, seconds = build_bank(tmp_path / f"hash-{n}.db", hashing, texts[:n])
            results["writes"].append(
                {"what": "add_many() batches of 2000", "embedder": hashing.name, "n": n, "seconds": seconds}
            )
            results["search"].append(search_row("hashing", bank, queries, 20 if n <= 10_000 else 3))
            print(f"hashing {n}: {results['search'][-1]}", flush=True)
            if n <= 10_000:
                snaps, restores = [], []
                for _ in range(5):
                    start = time.perf_counter()
                    copy = bank.snapshot()
                    snaps.append(time.perf_counter() - start)
                    copy.add("a rollout's own memory", scope="bench")
                    saved = bank.snapshot()
                    start = time.perf_counter()
                    bank.restore(saved)
                    restores.append(time.perf_counter() - start)
                results["snapshots"].append(
                    {
                        "n": n,
                        "embedder": hashing.name,
                        "snapshot_ms": ms(statistics.median(snaps)),
                        "restore_ms": ms(statistics.median(restores)),
                    }
                )
            bank.close()
    results["load_end"] = os.getloadavg()
    section = render(results)
    print(section)
    if not args.quick:
        heading, body = section.split("\n", 1)
        write_section(heading, body, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
