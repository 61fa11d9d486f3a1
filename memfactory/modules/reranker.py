"""RerankRetriever: an LLM picks and orders at most ``top_m`` of the retriever's ``top_n`` candidates.

RMM's retrospective reflection: the reranker is the learnable part, trained with GRPO on the
answer's correctness plus a citation bonus. Candidates are shown under short ids ("0", "1", ...);
the response (thinking dropped) is read as a list of ids by ``memory_ops.parse_id_list``. An
unparseable response falls back to the retriever's order (``rerank_fallback`` counted), so
retrieval never breaks because the policy wrote garbage. Counters: ``rerank_calls``,
``rerank_parsed``, ``rerank_selected`` (memories handed on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.memory.records import MemoryHit
from memfactory.modules.extractor import check_placeholders
from memfactory.modules.llm_module import LLMModule
from memfactory.modules.memory_ops import parse_id_list
from memfactory.registry import register
from memfactory.types import SamplingParams, Trajectory

RERANK_TEMPLATE = """Question: {question}

Candidate memories:
{candidates}

Which memories help answer the question? Answer with a JSON list of at most {top_m} ids, most useful first, e.g. [2, 0]."""


class RerankerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_n: int = Field(10, ge=1, le=65_536, description="Retriever candidates shown to the reranker")
    top_m: int = Field(3, ge=1, le=65_536, description="At most this many memories are kept")
    template: str = Field(RERANK_TEMPLATE, description="Prompt with {question}, {candidates} and optionally {top_m}")
    max_tokens: int = Field(32, ge=1, le=1_048_576, description="Cap on the new tokens of one rerank call")
    assistant_prefix: str = Field("", description="Text that opens the assistant turn, e.g. '['")
    stop: list[str] = Field(default_factory=list, description="Stop strings, e.g. ']' with the '[' prefix")
    system_prompt: str = Field("", description="Optional system message")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_placeholders(
            value, {"question", "candidates"}, {"question", "candidates", "top_m"}, "reranker template"
        )


@dataclass
class RerankRequest:
    trajectory: Trajectory
    question: str
    candidates: list[MemoryHit]
    trace: dict[str, Any] = field(default_factory=dict)


def render_candidates(hits: list[MemoryHit]) -> str:
    lines = []
    for i, hit in enumerate(hits):
        when = f" ({hit.item.tags[0]})" if hit.item.tags else ""
        lines.append(f"[{i}] {hit.item.text}{when}")
    return "\n".join(lines)


@register(
    "module",
    "reranker",
    description="LLM reranker: picks and orders at most m of the top-n retrieved memories (trainable, RMM)",
    config=RerankerConfig,
)
class RerankRetriever(LLMModule):
    name: ClassVar[str] = "reranker"
    options: RerankerConfig

    def __init__(self, options: RerankerConfig | None = None):
        super().__init__(options or RerankerConfig())

    def user_text(self, request: RerankRequest) -> str:
        opts = self.options
        return opts.template.format(
            question=request.question, candidates=render_candidates(request.candidates[: opts.top_n]), top_m=opts.top_m
        )

    def generate(
        self,
        requests: list[RerankRequest],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = True,
        trainable: bool = True,
    ) -> list[list[MemoryHit]]:
        """The kept memories per request, in the reranker's order; ONE backend call for all requests."""
        out: list[list[MemoryHit]] = [[] for _ in requests]
        asking = [i for i, r in enumerate(requests) if r.candidates]
        for i, request in enumerate(requests):
            if not request.candidates:
                request.trajectory.trace.append({"kind": "rerank", **request.trace, "candidates": [], "selected": []})
        prompts, generations = self.call_backend([requests[i] for i in asking], backend, params, train=train)
        m = self.options.top_m
        for i, prompt, generation in zip(asking, prompts, generations):
            request = requests[i]
            trajectory = request.trajectory
            self.record(trajectory, "rerank", prompt, generation, train=train, trainable=trainable)
            candidates = request.candidates[: self.options.top_n]
            ids, report = parse_id_list(
                prompt.assistant_prefix + generation.text, [str(j) for j in range(len(candidates))], limit=m
            )
            trajectory.count("rerank_calls")
            for name, amount in report.warnings.items():
                trajectory.count(f"rerank_{name}", amount)
            if ids is None:
                trajectory.count("rerank_fallback")
                selected = candidates[:m]
            else:
                trajectory.count("rerank_parsed")
                selected = [candidates[int(j)] for j in ids]
            trajectory.count("rerank_selected", len(selected))
            trajectory.trace.append(
                {
                    "kind": "rerank",
                    **request.trace,
                    "candidates": [
                        {"id": h.item.id, "text": h.item.text, "score": round(h.score, 4)} for h in candidates
                    ],
                    "selected": [h.item.id for h in selected],
                    "fallback": ids is None,
                }
            )
            out[i] = selected
        return out
