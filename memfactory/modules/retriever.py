"""NaiveRetriever: semantic top-k from the memory bank (``MemoryStore.search_many``, real embeddings).

No model call, so ``generate`` / ``rollout`` / ``inference`` are the same search; they exist so an
agent can treat every module alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from memfactory.memory.records import MemoryHit
from memfactory.memory.store import MemoryStore
from memfactory.modules.base import MemoryModule
from memfactory.registry import register


class RetrieverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(10, ge=1, le=65_536, description="Memories returned per query (Memory-R1 uses ~60 on LoCoMo)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Drop hits below this cosine similarity")
    scope: str | None = Field(None, description="Search only this scope (None = the whole bank)")


@register(
    "module",
    "retriever",
    description="Semantic top-k retrieval from the memory bank (cosine over sentence embeddings)",
    config=RetrieverConfig,
)
class NaiveRetriever(MemoryModule):
    name: ClassVar[str] = "retriever"
    options: RetrieverConfig

    def __init__(self, options: RetrieverConfig | None = None):
        super().__init__(options or RetrieverConfig())

    def retrieve(self, store: MemoryStore, queries: list[str], k: int | None = None) -> list[list[MemoryHit]]:
        """Top-k hits per query, best first (one embedding batch for all queries)."""
        if not queries:
            return []
        return store.search_many(
            queries, k=k or self.options.top_k, scope=self.options.scope, min_score=self.options.min_score
        )

    def generate(self, requests: list[tuple[MemoryStore, str]], backend: Any = None, params: Any = None, **_: Any):
        """``[(store, query)]`` -> hits per request; queries on the same store share one batch."""
        by_store: dict[int, list[int]] = {}
        for i, (store, _query) in enumerate(requests):
            by_store.setdefault(id(store), []).append(i)
        out: list[list[MemoryHit]] = [[] for _ in requests]
        for indices in by_store.values():
            store = requests[indices[0]][0]
            for i, hits in zip(indices, self.retrieve(store, [requests[i][1] for i in indices])):
                out[i] = hits
        return out

    rollout = generate
    inference = generate
