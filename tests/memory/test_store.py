"""The memory bank on real SQLite files with the real MiniLM model."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from memfactory.errors import MemFactoryError
from memfactory.memory import HashingEmbedder, MemoryNotFound, MemoryStore, Operation, get_embedder


@pytest.fixture(scope="module")
def minilm():
    return get_embedder("minilm")


@pytest.fixture
def bank(tmp_path, minilm):
    store = MemoryStore(tmp_path / "bank.db", embedder=minilm)
    yield store
    store.close()


def rows(store: MemoryStore) -> list[tuple]:
    """Everything in the bank, for before/after comparisons."""
    mem = store._conn.execute("SELECT id, scope, text, key, value, type, tags, embedding FROM memories ORDER BY id")
    hist = store._conn.execute("SELECT * FROM history ORDER BY id")
    return [*mem.fetchall(), *hist.fetchall()]


def test_semantic_search_ranks_paraphrase_first(bank):
    bank.add_many(
        [
            "My cat is named Bob",
            "I work as an accountant in Berlin",
            "I adore hiking in the mountains",
            "The quarterly report is due on Friday",
            "I am allergic to peanuts",
        ],
        scope="user:alice",
    )
    hits = bank.search("Which outdoor activity does the user love?", k=3)
    assert hits[0].item.text == "I adore hiking in the mountains"
    assert hits[0].score > hits[1].score >= hits[2].score
    assert len(bank.search("anything", k=50)) == 5
    pets = bank.search("Does the user have any pets?", k=1)
    assert pets[0].item.text == "My cat is named Bob"


def test_add_get_fields_and_embedding_stored_once(bank, minilm):
    ident = bank.add(
        "Alice's favourite food is sushi",
        scope="user:alice",
        key="favourite_food",
        value="sushi",
        type="preference",
        tags=["food", "likes"],
        actor="extractor",
    )
    item = bank.get(ident)
    assert (item.text, item.scope, item.key, item.value, item.type, item.tags) == (
        "Alice's favourite food is sushi",
        "user:alice",
        "favourite_food",
        "sushi",
        "preference",
        ["food", "likes"],
    )
    assert item.created_at == item.updated_at
    blob = bank._conn.execute("SELECT embedding FROM memories WHERE id = ?", (ident,)).fetchone()[0]
    stored = np.frombuffer(blob, dtype=np.float32)
    np.testing.assert_allclose(stored, minilm.encode([item.text])[0], atol=1e-5)
    assert bank.get("missing") is None
    with pytest.raises(MemFactoryError, match="already exists"):
        bank.add("a different text", id=ident)
    assert bank.get(ident).text == "Alice's favourite food is sushi"
    # The bank records its vector space; reopening without an embedder picks the same one.
    again = MemoryStore(bank.path)
    assert again.embedder.name == minilm.name
    assert again.search("What does Alice like to eat?", k=1)[0].item.id == ident


def test_history_replays_add_update_delete(bank):
    ident = bank.add("I live in Paris", actor="turn-1")
    bank.update(ident, "I live in Lyon", actor="turn-2")
    assert bank.search("Which city does the user live in?", k=1)[0].item.text == "I live in Lyon"
    bank.update(ident, tags=["location"], actor="turn-3")
    removed = bank.delete(ident, actor="turn-4")
    assert removed.text == "I live in Lyon" and bank.get(ident) is None
    life = [(e.op, e.old_value, e.new_value, e.actor) for e in bank.history(ident)]
    assert life == [
        ("ADD", None, "I live in Paris", "turn-1"),
        ("UPDATE", "I live in Paris", "I live in Lyon", "turn-2"),
        ("UPDATE", "I live in Lyon", "I live in Lyon", "turn-3"),
        ("DELETE", "I live in Lyon", None, "turn-4"),
    ]
    assert bank.search("Which city does the user live in?", k=5) == []
    with pytest.raises(MemoryNotFound, match="no memory with id"):
        bank.update(ident, "again")
    with pytest.raises(MemoryNotFound):
        bank.delete(ident)


def test_apply_batch_is_atomic(bank):
    keep = bank.add("I have two sisters")
    gone = bank.add("My car is red")
    before = rows(bank)
    bad = [
        Operation("ADD", text="I started learning piano"),
        Operation("UPDATE", id=keep, text="I have three sisters"),
        Operation("DELETE", id=gone),
        Operation("DELETE", id="no-such-id"),
    ]
    with pytest.raises(MemFactoryError, match=r"operation 3 \(DELETE\).*no-such-id"):
        bank.apply(bad)
    assert rows(bank) == before
    result = bank.apply(bad, raise_on_error=False)
    assert not result.ok and result.failed_index == 3 and "no-such-id" in result.error
    assert rows(bank) == before
    # Malformed operations are rejected before anything is touched.
    with pytest.raises(MemFactoryError, match="unknown memory operation"):
        bank.apply([{"event": "MERGE", "id": keep}])
    with pytest.raises(MemFactoryError, match=r"operation 1 \(ADD\): memory text must be a non-empty"):
        bank.apply([Operation("NONE"), Operation("ADD", text="  ")])
    assert rows(bank) == before

    good = bank.apply(bad[:3] + [{"event": "NOOP"}], actor="manager")
    assert good.ok and good.changed == 3 and good.skipped == 1
    assert bank.get(keep).text == "I have three sisters" and bank.get(gone) is None
    texts = {m.text for m in bank.all()}
    assert texts == {"I have three sisters", "I started learning piano"}
    assert {e.actor for e in bank.history() if e.at > before[-1][6]} == {"manager"}


def test_snapshot_restore_isolation(bank, tmp_path):
    base = bank.add("The user drinks coffee every morning", scope="user:alice")
    bank.search("morning drink", k=1)  # build the matrix cache so the copy inherits it
    branch = bank.snapshot()
    assert branch.path == ":memory:" and len(branch) == 1
    branch.add("The user switched to green tea", scope="user:alice")
    branch.delete(base)
    assert [m.text for m in bank.all()] == ["The user drinks coffee every morning"]
    assert [h.item.text for h in branch.search("What does the user drink?", k=5)] == ["The user switched to green tea"]
    assert [h.item.text for h in bank.search("What does the user drink?", k=5)] == [
        "The user drinks coffee every morning"
    ]

    saved = bank.snapshot(tmp_path / "saved.db")
    bank.update(base, "The user quit coffee")
    bank.add("Unrelated later memory")
    bank.restore(saved)
    assert [m.text for m in bank.all()] == ["The user drinks coffee every morning"]
    assert [e.op for e in bank.history(base)] == ["ADD"]
    assert bank.search("coffee", k=5)[0].item.id == base and len(bank.search("coffee", k=5)) == 1
    assert bank.db.journal_mode == "wal"
    # The restored bank is a normal bank: other connections see it and it keeps working.
    other = MemoryStore(bank.path, embedder=bank.embedder)
    assert len(other) == 1
    bank.add("After restore")
    assert len(other) == 2


def test_snapshot_of_small_bank_is_fast(tmp_path):
    store = MemoryStore(tmp_path / "small.db", embedder=HashingEmbedder(64))
    store.add_many([f"fact number {i}" for i in range(200)])
    start = time.perf_counter()
    copy = store.snapshot()
    elapsed = time.perf_counter() - start
    assert len(copy) == 200 and elapsed < 0.5


def test_scope_filtering_and_reset(bank):
    bank.add_many(["Alice plays tennis", "Alice is vegetarian"], scope="user:alice")
    bank.add_many(["Bob plays tennis"], scope="user:bob")
    bank.add("Session note: discussed tennis", scope="session:3")
    assert sorted({m.scope for m in bank.all()}) == ["session:3", "user:alice", "user:bob"]
    assert {h.item.scope for h in bank.search("tennis", k=10, scope="user:bob")} == {"user:bob"}
    assert len(bank.search("tennis", k=10)) == 4
    assert [m.text for m in bank.all("user:alice")] == ["Alice plays tennis", "Alice is vegetarian"]
    assert bank.count("user:alice") == 2
    assert bank.reset("user:alice") == 2
    assert bank.all("user:alice") == [] and bank.history(scope="user:alice") == []
    assert len(bank) == 2 and len(bank.history()) == 2
    assert bank.search("tennis", k=10, scope="user:alice") == []
    assert bank.reset() == 2 and len(bank) == 0 and bank.history() == []


def test_search_sees_writes_from_another_connection(tmp_path):
    emb = HashingEmbedder(64)
    reader = MemoryStore(tmp_path / "shared.db", embedder=emb)
    writer = MemoryStore(tmp_path / "shared.db", embedder=emb)
    writer.add("green tea in the morning")
    assert [h.item.text for h in reader.search("green tea", k=5)] == ["green tea in the morning"]
    writer.add("green tea with honey")
    assert len(reader.search("green tea", k=5)) == 2  # the cached matrix was invalidated


def test_locked_database_gives_clear_error_and_no_partial_write(tmp_path):
    path = tmp_path / "locked.db"
    store = MemoryStore(path, embedder=HashingEmbedder(64), timeout=0.2)
    store.add("before the lock")
    before = rows(store)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(MemFactoryError, match=r"locked\.db is locked by another connection.*Nothing was written"):
            store.add_many(["a", "b", "c"])
        with pytest.raises(MemFactoryError, match="locked"):
            store.apply([Operation("ADD", text="x")])
        assert [m.text for m in store.all()] == ["before the lock"]  # reads still work under WAL
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rows(store) == before
    store.add("after the lock")
    assert len(store) == 2


def test_unreadable_database_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a sqlite database, just some text " * 100)
    with pytest.raises(MemFactoryError, match=r"junk\.db is unreadable"):
        MemoryStore(junk, embedder=HashingEmbedder(64))
    with pytest.raises(MemFactoryError, match="is a directory"):
        MemoryStore(tmp_path, embedder=HashingEmbedder(64))


def test_embedder_mismatch_is_refused_then_reembed_converts(tmp_path, minilm):
    path = tmp_path / "mixed.db"
    MemoryStore(path, embedder=HashingEmbedder(64)).add("I adore hiking in the mountains")
    with pytest.raises(MemFactoryError, match=r"hashing:64.*reembed"):
        MemoryStore(path, embedder=minilm)
    store = MemoryStore(path, embedder=HashingEmbedder(64))
    store._embedder = minilm
    assert store.reembed() == 1
    reopened = MemoryStore(path)
    assert reopened.embedder.name == minilm.name
    assert reopened.search("Which outdoor activity does the user love?", k=1)[0].score > 0.4


def test_top_k_order_matches_brute_force(tmp_path):
    store = MemoryStore(tmp_path / "rank.db", embedder=HashingEmbedder(128))
    texts = [
        f"note {i} about {['tea', 'coffee', 'chess', 'tennis', 'paris', 'berlin'][i % 6]} and item {i * 7 % 13}"
        for i in range(300)
    ]
    store.add_many(texts)
    query = "chess and item 5"
    hits = store.search(query, k=10)
    vectors = store.embedder.encode(texts)
    scores = vectors @ store.embedder.encode([query])[0]
    expected = sorted(scores, reverse=True)[:10]
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)
    assert store.search(query, k=0) == []
    assert all(h.score >= 0.3 for h in store.search(query, k=300, min_score=0.3))


def test_search_many_matches_search(bank):
    bank.add_many(["I adore hiking in the mountains", "My cat is named Bob", "I work as an accountant in Berlin"])
    queries = ["Which outdoor activity does the user love?", "What is the user's job?", "pets"]
    batched = bank.search_many(queries, k=2)
    for query, hits in zip(queries, batched):
        single = bank.search(query, k=2)
        assert [h.item.id for h in hits] == [h.item.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)
    assert batched[1][0].item.text == "I work as an accountant in Berlin"
    assert bank.search_many([], k=3) == []


def test_open_existing_refuses_what_is_not_a_bank_and_leaves_it_untouched(tmp_path):
    import sqlite3

    from memfactory.errors import MemFactoryError
    from memfactory.memory.embed import get_embedder

    with pytest.raises(MemFactoryError, match="does not exist"):
        MemoryStore.open_existing(tmp_path / "none.db")
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, just some text " * 20)
    with pytest.raises(MemFactoryError, match="not a readable SQLite file"):
        MemoryStore.open_existing(text)
    other = tmp_path / "runs.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    before = other.read_bytes()
    with pytest.raises(MemFactoryError, match=r"not a memory bank: it lacks the table\(s\) memories, history, meta "
                                              r"\(its tables: runs\)"):
        MemoryStore.open_existing(other)
    assert other.read_bytes() == before  # no tables were added to someone else's database
    bank = MemoryStore(tmp_path / "bank.db", embedder=get_embedder("hashing"))
    bank.add("Ava lives in Berlin")
    bank.close()
    with MemoryStore.open_existing(tmp_path / "bank.db") as again:
        assert [m.text for m in again.all()] == ["Ava lives in Berlin"]
