"""Several processes on one SQLite file: throughput, p99 latency, retries and errors.

Two workloads, each on real files with real processes (multiprocessing, spawn):

* **memory bank**: P processes (default 4) each run a seeded mix of add / atomic batch (apply) /
  update / delete of their own memories, updates of four memories they all share, and searches
  (each checks that it finds a memory it just wrote: read-your-writes under concurrency).
* **runs database**: W writers (default 2) log a trainer's per-step metrics (metrics.jsonl) and
  the run row's progress the way ``TrainingSession._on_step`` does, while one reader polls the way
  the web UI's Train and Runs tabs do (reconcile, list_runs, get, the run's metrics.jsonl through
  ``read_records``).

Retries: none at application level — WAL plus ``BEGIN IMMEDIATE`` plus SQLite's busy timeout
make a writer wait inside the call instead of failing, so a lock wait shows up as latency
(p99), never as an error. Any exception is counted as an error (``database is locked`` included).

``python bench/concurrency.py [--bank-procs 4 --bank-ops 300 --runs-writers 2 --runs-steps 1000]``
The worker functions are also used by ``tests/hardening/test_concurrency.py``, which asserts on
what they log (the bench only measures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_IDS = [f"shared-{i}" for i in range(4)]
METRIC_KEYS = [f"metric/{i}" for i in range(23)] + ["reward/mean", "loss", "hw/peak_gib"]
WORDS = ["river", "castle", "lantern", "violet", "harbour", "meadow", "copper", "falcon", "orchard", "summit"]


def bank_worker(path: str, name: str, seed: int, n_ops: int, out: str, start: Any = None) -> None:
    """A seeded mix of bank operations; writes what succeeded, latencies and errors to ``out`` (JSON)."""
    from memfactory.memory import HashingEmbedder, MemoryStore, Operation

    store = MemoryStore(path, embedder=HashingEmbedder(64))  # the default timeout: what a user gets
    rng = random.Random(seed)
    live: dict[str, str] = {}  # own memory id -> text
    log: list[list[Any]] = []  # successful writes in order: [op, id, new text]
    shared_writes: list[list[str]] = []
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    misses = 0
    scope = f"user:{name}"
    if start is not None:
        start.wait(120)
    window = [time.time()]
    for i in range(n_ops):
        roll = rng.random()
        kind = ("add" if roll < 0.3 or not live else "batch" if roll < 0.4 else "update" if roll < 0.55
                else "delete" if roll < 0.65 else "shared" if roll < 0.75 else "search")
        text = f"{name} memory {i} about the {rng.choice(WORDS)} {rng.choice(WORDS)} tag{name}{i}"
        began = time.perf_counter()
        try:
            if kind == "add":
                ident = f"{name}-{i}"
                store.add(text, scope=scope, actor=name, id=ident)
                live[ident] = text
                log.append(["ADD", ident, text])
            elif kind == "batch":
                target = rng.choice(sorted(live))
                ops = [Operation("ADD", id=f"{name}-{i}a", text=text + " a", scope=scope),
                       Operation("ADD", id=f"{name}-{i}b", text=text + " b", scope=scope),
                       Operation("UPDATE", id=target, text=text + " batch-revised")]
                store.apply(ops, actor=name)
                live.update({f"{name}-{i}a": text + " a", f"{name}-{i}b": text + " b", target: text + " batch-revised"})
                log += [["ADD", f"{name}-{i}a", text + " a"], ["ADD", f"{name}-{i}b", text + " b"],
                        ["UPDATE", target, text + " batch-revised"]]
            elif kind == "update":
                target = rng.choice(sorted(live))
                store.update(target, text + " revised", actor=name)
                live[target] = text + " revised"
                log.append(["UPDATE", target, text + " revised"])
            elif kind == "delete":
                target = rng.choice(sorted(live))
                store.delete(target, actor=name)
                del live[target]
                log.append(["DELETE", target, None])
            elif kind == "shared":
                target = rng.choice(SHARED_IDS)
                store.update(target, f"{name} wrote shared {i}", actor=name)
                shared_writes.append([target, f"{name} wrote shared {i}"])
            else:
                target = rng.choice(sorted(live))
                hits = store.search(live[target], k=1, scope=scope)
                misses += not hits or hits[0].item.id != target
                store.search(rng.choice(WORDS), k=5)  # the whole bank, every writer's rows
        except Exception as exc:  # noqa: BLE001 - counted and reported: the point of the exercise
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        latencies.setdefault(kind, []).append(time.perf_counter() - began)
    window.append(time.time())
    store.close()
    Path(out).write_text(json.dumps({"name": name, "window": window, "live": live, "log": log, "shared": shared_writes,
                                     "latencies": latencies, "errors": errors, "search_misses": misses}))


def runs_writer(db_path: str, run_id: str, steps: int, out: str, start: Any = None) -> None:
    """Log ``steps`` steps the way the trainer does (metrics.jsonl + the row's progress), timing each call."""
    from memfactory.tracking.metrics import MetricsWriter
    from memfactory.tracking.runs import RunsDB

    db = RunsDB(db_path)
    latencies: list[float] = []
    errors: list[str] = []
    run_dir = Path(db_path).parent / run_id
    db.create_run("bench", run_dir, run_id=run_id, total_steps=steps)
    db.set_status(run_id, "running")
    writer = MetricsWriter(run_dir)
    if start is not None:
        start.wait(120)
    window = [time.time()]
    for step in range(1, steps + 1):
        metrics = {key: random.random() for key in METRIC_KEYS}
        for write in ("metrics", "progress"):
            began = time.perf_counter()
            try:
                if write == "metrics":
                    writer.write(step, metrics)
                else:
                    db.update_progress(run_id, step, metrics["reward/mean"], peak_gib=metrics["hw/peak_gib"],
                                       seconds_per_step=0.01, eta_s=(steps - step) * 0.01)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - began)
    window.append(time.time())
    writer.close()
    db.set_status(run_id, "finished")
    Path(out).write_text(json.dumps({"window": window, "latencies": latencies, "errors": errors}))


def ui_reader(db_path: str, run_ids: list[str], out: str, timeout: float = 600.0, start: Any = None) -> None:
    """Poll like the UI until every run in ``run_ids`` has ended: what it saw, latencies, errors."""
    from memfactory.tracking.metrics import RunDir, read_records
    from memfactory.tracking.runs import TERMINAL_STATUSES, RunsDB

    if start is not None:
        start.wait(120)
    deadline = time.monotonic() + timeout
    latencies: list[float] = []
    errors: list[str] = []
    seen: dict[str, list[list[Any]]] = {run_id: [] for run_id in run_ids}  # [status, step, metric rows]
    db = None
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            if db is None and Path(db_path).is_file():
                db = RunsDB(db_path)
            if db is not None:
                db.reconcile()  # the Train and Runs tabs' refresh
                db.list_runs()
                for run_id in run_ids:
                    record = db.get(run_id)
                    if record is not None:
                        records = read_records(RunDir(record.run_dir).metrics_path)
                        seen[run_id].append([record.status, record.step, len(records)])
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - began)
        if all(s and s[-1][0] in TERMINAL_STATUSES for s in seen.values()):
            break
        time.sleep(0.02)
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors, "seen": seen}))


def new_bank(path: str) -> None:
    """The bank every worker opens, with the four memories they all update."""
    from memfactory.memory import HashingEmbedder, MemoryStore

    with MemoryStore(path, embedder=HashingEmbedder(64)) as store:
        for ident in SHARED_IDS:
            store.add(f"shared memory {ident}", scope="shared", id=ident, actor="setup")


def run_processes(targets: list[tuple[Any, tuple]], with_barrier: bool = True) -> list[int]:
    """Start every (function, args) in a spawned process, released together; exit codes."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(targets)) if with_barrier else None
    procs = [ctx.Process(target=fn, args=(*args, start)) for fn, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(900)
    return [p.exitcode for p in procs]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bank_bench(folder: Path, procs: int, ops: int) -> dict[str, Any]:
    path = str(folder / "bank.db")
    new_bank(path)
    outs = [str(folder / f"bank-{i}.json") for i in range(procs)]
    codes = run_processes([(bank_worker, (path, f"w{i}", i, ops, outs[i])) for i in range(procs)])
    results = [json.loads(Path(o).read_text()) for o in outs]
    wall = max(r["window"][1] for r in results) - min(r["window"][0] for r in results)  # after start-up
    every = [x for r in results for lat in r["latencies"].values() for x in lat]
    kinds = sorted({k for r in results for k in r["latencies"]})
    by_kind = {k: [x for r in results for x in r["latencies"].get(k, [])] for k in kinds}
    return {"exit_codes": codes, "ops": len(every), "wall_s": wall, "ops_per_s": len(every) / wall,
            "p50_ms": 1000 * statistics.median(every), "p99_ms": 1000 * percentile(every, 0.99),
            "p99_ms_by_kind": {k: 1000 * percentile(v, 0.99) for k, v in by_kind.items()},
            "errors": sum(len(r["errors"]) for r in results), "search_misses": sum(r["search_misses"] for r in results),
            "retries": 0}


def runs_bench(folder: Path, writers: int, steps: int) -> dict[str, Any]:
    db_path = str(folder / "memfactory.db")
    from memfactory.tracking.runs import RunsDB

    RunsDB(db_path).close()
    ids = [f"bench-{i}" for i in range(writers)]
    outs = [str(folder / f"writer-{i}.json") for i in range(writers)]
    reader_out = str(folder / "reader.json")
    targets = [(runs_writer, (db_path, ids[i], steps, outs[i])) for i in range(writers)]
    codes = run_processes([*targets, (ui_reader, (db_path, ids, reader_out, 600.0))])
    written = [json.loads(Path(o).read_text()) for o in outs]
    wall = max(w["window"][1] for w in written) - min(w["window"][0] for w in written)
    reader = json.loads(Path(reader_out).read_text())
    lat = [x for w in written for x in w["latencies"]]
    return {"exit_codes": codes, "writes": len(lat), "wall_s": wall, "writes_per_s": len(lat) / wall,
            "write_p99_ms": 1000 * percentile(lat, 0.99), "polls": len(reader["latencies"]),
            "poll_p50_ms": 1000 * statistics.median(reader["latencies"]),
            "poll_p99_ms": 1000 * percentile(reader["latencies"], 0.99),
            "errors": sum(len(w["errors"]) for w in written) + len(reader["errors"]), "retries": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank-procs", type=int, default=4)
    parser.add_argument("--bank-ops", type=int, default=300, help="operations per bank process")
    parser.add_argument("--runs-writers", type=int, default=2)
    parser.add_argument("--runs-steps", type=int, default=1000, help="steps logged per writer")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bank = bank_bench(Path(tmp), args.bank_procs, args.bank_ops)
    with tempfile.TemporaryDirectory() as tmp:
        runs = runs_bench(Path(tmp), args.runs_writers, args.runs_steps)
    print(f"memory bank, {args.bank_procs} processes x {args.bank_ops} mixed ops: {bank['ops_per_s']:.0f} ops/s, "
          f"p50 {bank['p50_ms']:.1f} ms, p99 {bank['p99_ms']:.1f} ms, retries {bank['retries']}, "
          f"errors {bank['errors']}, search misses {bank['search_misses']}, exit codes {bank['exit_codes']}")
    print("  p99 by kind: " + ", ".join(f"{k} {v:.1f} ms" for k, v in bank["p99_ms_by_kind"].items()))
    print(f"runs database, {args.runs_writers} writers x {args.runs_steps} steps + 1 UI reader: "
          f"{runs['writes_per_s']:.0f} writes/s, write p99 {runs['write_p99_ms']:.1f} ms, "
          f"{runs['polls']} polls, poll p50 {runs['poll_p50_ms']:.1f} ms p99 {runs['poll_p99_ms']:.1f} ms, "
          f"retries {runs['retries']}, "
          f"errors {runs['errors']}, exit codes {runs['exit_codes']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bank": bank, "runs": runs}, indent=2))
    return 0 if bank["errors"] == runs["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
