"""Embedders: the bundled MiniLM is semantic and offline; the hashing fallback is deterministic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import HashingEmbedder, SentenceTransformerEmbedder, get_embedder


@pytest.fixture(scope="module")
def minilm():
    return get_embedder("minilm")


def test_minilm_loads_offline_and_is_normalised(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert minilm.dim == 384
    assert minilm.name == "st:all-MiniLM-L6-v2"
    vectors = minilm.encode(["I adore hiking in the mountains", "My cat is named Bob"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_is_semantic(minilm):
    query, para, other = minilm.encode(
        ["Which outdoor activity does the user love?", "I adore hiking in the mountains", "My cat is named Bob"]
    )
    assert float(query @ para) > float(query @ other) + 0.2


def test_model_is_loaded_once_per_process(minilm):
    again = get_embedder("all-MiniLM-L6-v2")
    assert again._model is minilm._model
    assert SentenceTransformerEmbedder()._model is minilm._model
    assert get_embedder(minilm.name)._model is minilm._model  # the name a bank records resolves back


def test_batches_match_single_encoding(minilm):
    texts = [f"memory number {i} about topic {i % 7}" for i in range(70)]
    batched = minilm.encode(texts)
    single = np.stack([minilm.encode([t])[0] for t in texts[:3]])
    np.testing.assert_allclose(batched[:3], single, atol=1e-4)


def test_hashing_is_deterministic_across_processes():
    emb = HashingEmbedder(64)
    here = emb.encode(["Alice likes green tea", "Bob plays chess"])
    code = (
        "from memfactory.memory.embed import HashingEmbedder;"
        "import sys; sys.stdout.write(HashingEmbedder(64).encode(['Alice likes green tea', 'Bob plays chess']).tobytes().hex())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert here.tobytes().hex() == there
    np.testing.assert_allclose(np.linalg.norm(here, axis=1), 1.0, atol=1e-6)


def test_hashing_is_lexical():
    emb = get_embedder("hashing:128")
    assert emb.dim == 128 and emb.name == "hashing:128"
    query, overlap, unrelated = emb.encode(["green tea preferences", "Alice likes green tea", "Bob plays chess"])
    assert float(query @ overlap) > float(query @ unrelated)
    assert get_embedder("hashing") is get_embedder("hashing")
    assert get_embedder("hashing").dim == 256


def test_bad_names_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MemFactoryError, match="hashing"):
        get_embedder("hashing:lots")
    with pytest.raises(MemFactoryError, match="could not load embedding model"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))
