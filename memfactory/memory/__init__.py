"""Memory layer: the SQLite memory bank and its parts.

``store.py`` (``MemoryStore``) composes ``records.py`` (what a bank holds, row writes), ``ops.py``
(the one memory-operation language), ``index.py`` (per-scope embedding matrices) and ``embed.py``
(sentence embeddings); the SQLite plumbing is ``memfactory/sqlite.py``, shared with the runs DB.
"""

from memfactory.memory.embed import Embedder, HashingEmbedder, SentenceTransformerEmbedder, get_embedder
from memfactory.memory.ops import ApplyResult, Operation
from memfactory.memory.records import HistoryEntry, MemoryHit, MemoryItem, MemoryNotFound
from memfactory.memory.store import MemoryStore

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
