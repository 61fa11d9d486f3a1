"""Two processes writing one bank at once lose nothing (WAL + IMMEDIATE transactions + busy timeout)."""

from __future__ import annotations

import itertools
import multiprocessing as mp

from memfactory.memory import HashingEmbedder, MemoryStore, Operation

PER_WORKER = 60


def _writer(path: str, name: str, start, done) -> None:
    store = MemoryStore(path, embedder=HashingEmbedder(64), timeout=30)
    start.wait(60)  # both processes have opened the bank before either writes
    for i in range(PER_WORKER):
        if i % 3 == 2:  # mix single adds with small atomic batches
            store.apply(
                [Operation("ADD", text=f"{name} batch fact {i}", scope=f"user:{name}"), Operation("NONE")], actor=name
            )
        else:
            store.add(f"{name} fact {i}", scope=f"user:{name}", actor=name)
        if i % 10 == 0:
            store.search(f"{name} fact", k=3)  # reads interleaved with the other process's writes
    store.close()
    done.put(name)


def test_two_processes_adding_concurrently_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.db")
    MemoryStore(path, embedder=HashingEmbedder(64)).close()  # both workers open an existing bank
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(path, name, start, done)) for name in ("alice", "bob")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(done.get(timeout=5) for _ in workers) == ["alice", "bob"]

    store = MemoryStore(path)
    assert store.count("user:alice") == PER_WORKER and store.count("user:bob") == PER_WORKER
    assert len({m.id for m in store.all()}) == 2 * PER_WORKER
    history = store.history()
    assert len(history) == 2 * PER_WORKER and {e.op for e in history} == {"ADD"}
    assert {e.actor for e in history} == {"alice", "bob"}
    # The two writers really interleaved (not one after the other), so the locking was exercised.
    actors = [e.actor for e in history]
    switches = sum(a != b for a, b in itertools.pairwise(actors))
    assert switches >= 1
    hits = store.search("bob batch fact 2", k=1, scope="user:bob")
    assert hits[0].item.text == "bob batch fact 2"


def test_fresh_bank_created_by_two_processes_at_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(path, name, start, done)) for name in ("carol", "dave")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(MemoryStore(path)) == 2 * PER_WORKER
