"""The bank's embedding index: per-scope matrices behind one version token, on real SQLite files."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from memfactory.errors import MemFactoryError
from memfactory.memory import HashingEmbedder, MemoryStore, Operation
from memfactory.memory.index import top_k


def test_cached_matrices_extend_on_add_and_match_a_fresh_load(tmp_path):
    emb = HashingEmbedder(64)
    store = MemoryStore(tmp_path / "cache.db", embedder=emb)
    store.add_many(["tea in the morning", "chess on sundays"], scope="user:alice")
    store.add("tennis with Bob", scope="user:bob")
    store.search("tea", k=3)
    store.search("tea", k=3, scope="user:alice")
    branch = store.snapshot()
    old_alice = store._index.scopes()["user:alice"].vectors_t
    store.add_many(["green tea with honey"], scope="user:alice")
    store.apply([Operation("ADD", text="bob likes tea too", scope="user:bob"), Operation("NONE")])
    # Extended in place of a rebuild: the caches are current without reading SQLite again.
    token = store._index.token()
    assert {s: m.token for s, m in store._index.scopes().items()} == {None: token, "user:alice": token}
    fresh = MemoryStore(store.path, embedder=emb)
    for scope in (None, "user:alice"):
        mine, theirs = store._index.scopes()[scope], fresh._matrix(scope)
        assert mine.ids == theirs.ids
        np.testing.assert_array_equal(mine.vectors_t, theirs.vectors_t)
    assert old_alice.shape[1] == 2 and len(branch.search("tea", k=10, scope="user:alice")) == 2
    assert [h.item.text for h in store.search("green tea honey", k=1, scope="user:alice")] == ["green tea with honey"]
    # Any other change drops the caches; the next search rebuilds them correctly.
    store.delete(store.search("chess", k=1)[0].item.id)
    assert store._index.scopes() == {}
    assert [m.text for m in store.all("user:alice")] == ["tea in the morning", "green tea with honey"]
    assert len(store.search("tea", k=10, scope="user:alice")) == 2


def test_every_kind_of_change_moves_the_one_token(tmp_path):
    emb = HashingEmbedder(64)
    store = MemoryStore(tmp_path / "token.db", embedder=emb)
    other = MemoryStore(tmp_path / "token.db", embedder=emb)
    seen = [store._index.token()]

    def moved() -> bool:
        seen.append(store._index.token())
        return seen[-1] != seen[-2]

    store.add("a first memory")
    assert moved()  # own commit (SQLite's data_version does not count it)
    other.add("written by another connection")
    assert moved()  # another connection's commit
    assert [h.item.text for h in store.search("another connection", k=1)] == ["written by another connection"]
    store.restore(store.snapshot())
    assert moved()  # replaced wholesale by a backup
    assert not moved()  # reads leave it alone
    other.close()
    store.close()


def test_a_failed_write_drops_the_matrices_and_search_stays_right(tmp_path):
    store = MemoryStore(tmp_path / "fail.db", embedder=HashingEmbedder(64))
    keep = store.add("the user keeps bees")
    store.search("bees", k=1)
    assert store._index.scopes()
    with pytest.raises(MemFactoryError, match="no-such-id"):
        store.apply([Operation("ADD", text="a rolled back memory"), Operation("DELETE", id="no-such-id")])
    assert store._index.scopes() == {}
    assert [h.item.id for h in store.search("memory bees", k=5)] == [keep]


def test_a_snapshot_shares_the_matrices_it_was_handed(tmp_path):
    store = MemoryStore(tmp_path / "share.db", embedder=HashingEmbedder(64))
    store.add_many([f"fact {i}" for i in range(20)])
    store.search("fact", k=3)
    copy = store.snapshot()
    shared = copy._index.get(None, copy._index.token())
    assert shared is not None and shared.vectors_t is store._index.scopes()[None].vectors_t
    copy.add("only in the copy")
    # Extending made a new array: the original's matrix is untouched.
    assert store._index.scopes()[None].vectors_t.shape[1] == 20
    assert copy._index.scopes()[None].vectors_t.shape[1] == 21


def test_wrong_sized_embeddings_are_a_clear_error(tmp_path):
    path = tmp_path / "bad.db"
    MemoryStore(path, embedder=HashingEmbedder(64)).add("a memory")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE memories SET embedding = ?", (b"\x00" * 12,))
    with pytest.raises(MemFactoryError, match=r"bad\.db .*not 64-dimensional float32; call reembed"):
        MemoryStore(path, embedder=HashingEmbedder(64)).search("memory", k=1)


def test_top_k_is_best_first_and_honours_a_floor():
    scores = np.array([0.1, 0.9, 0.5, 0.9, -0.2, 0.5], dtype=np.float32)
    assert sorted(top_k(scores, 2).tolist()) == [1, 3]
    picked = top_k(scores, 3)
    assert scores[picked].tolist() == sorted(scores.tolist(), reverse=True)[:3]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 5, 0, 4]  # all of them: ties in index order
    assert top_k(scores, 10, min_score=0.5).tolist() == [1, 3, 2, 5]
    assert top_k(scores[:0], 3).tolist() == []
