"""Memory layer: the SQLite memory bank (store.py) and its sentence embeddings (embed.py)."""

from memfactory.memory.embed import Embedder, HashingEmbedder, SentenceTransformerEmbedder, get_embedder
from memfactory.memory.store import (
    ApplyResult,
    HistoryEntry,
    MemoryHit,
    MemoryItem,
    MemoryNotFound,
    MemoryStore,
    Operation,
)

__all__ = [
    "ApplyResult",
    "Embedder",
    "HashingEmbedder",
    "HistoryEntry",
    "MemoryHit",
    "MemoryItem",
    "MemoryNotFound",
    "MemoryStore",
    "Operation",
    "SentenceTransformerEmbedder",
    "get_embedder",
]
