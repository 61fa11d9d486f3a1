"""NaiveUpdater: new facts + related existing memories -> ADD / UPDATE / DELETE / NONE, applied atomically.

The related memories are shown under short ids ("0", "1", ...) so the model never has to copy a
UUID; ``memory_ops.parse_operations`` maps them back and turns unknown ids or ops into NONE
(counted). The batch of one call goes through ``MemoryStore.apply`` in a single transaction, so a
failed batch leaves the bank exactly as it was (counted as ``apply_failed``). An unparseable
response applies nothing unless ``fallback: add`` (then every new fact is ADDed, counted as
``update_fallback``); ``add_if_empty`` also ADDs them when the response has no applicable operation,
so a model too small to manage memory still fills the bank (for training its answer agent). Trace entries: ``{"kind": "op", op, id, old, new, applied, ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.json_repair import ParseReport
from memfactory.memory.ops import ApplyResult, Operation
from memfactory.memory.records import MemoryItem
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import check_placeholders
from memfactory.modules.llm_module import LLMModule
from memfactory.modules.memory_ops import Fact, apply_operations, parse_operations
from memfactory.registry import register
from memfactory.types import ChatPrompt, SamplingParams, Trajectory

UPDATE_TEMPLATE = """You manage a memory bank about the people in a conversation. Compare the new facts with the existing memories and choose one operation per fact:
- ADD: the fact is new; give its text.
- UPDATE: the fact changes an existing memory; give that memory's id and the new text.
- DELETE: the fact says an existing memory is no longer true; give that memory's id.
- NONE: the fact is already known.

Existing memories:
{memories}

New facts:
{facts}

Answer with a JSON list only, e.g. [{{"op": "ADD", "text": "..."}}, {{"op": "UPDATE", "id": "0", "text": "..."}}, {{"op": "DELETE", "id": "1"}}, {{"op": "NONE"}}]."""


class UpdaterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(UPDATE_TEMPLATE, description="Update prompt with {memories} and {facts}")
    related_k: int = Field(3, ge=0, le=65_536, description="Existing memories retrieved per new fact")
    max_related: int = Field(10, ge=0, le=65_536, description="At most this many existing memories shown per call")
    max_tokens: int = Field(256, ge=1, le=1_048_576, description="Cap on the new tokens of one update")
    max_ops: int = Field(32, ge=1, le=65_536, description="Operations kept per call (the rest are dropped and counted)")
    fallback: Literal["none", "add", "add_if_empty"] = Field(
        "none",
        description="none: an unparseable response changes nothing; add: it ADDs every new fact; "
        "add_if_empty: so does a response with no applicable operation (for models too small to manage memory)",
    )
    assistant_prefix: str = Field("", description="Text that opens the assistant turn, e.g. '['")
    stop: list[str] = Field(default_factory=list, description="Stop strings for update calls")
    system_prompt: str = Field("", description="Optional system message")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_placeholders(value, {"memories", "facts"}, {"memories", "facts"}, "updater template")


@dataclass
class UpdateRequest:
    trajectory: Trajectory
    store: MemoryStore
    facts: list[Fact]
    related: list[MemoryItem]
    scope: str = "default"
    date: str = ""  # recorded as a tag on ADDed memories (answers to "when" questions need it)
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpdateResult:
    operations: list[Operation]
    result: ApplyResult
    report: ParseReport


def render_memories(items: list[MemoryItem]) -> str:
    if not items:
        return "(none)"
    return "\n".join(json.dumps({"id": str(i), "text": item.text}, ensure_ascii=False) for i, item in enumerate(items))


@register(
    "module",
    "updater",
    description="Memory manager: new facts + related memories -> ADD/UPDATE/DELETE/NONE, applied atomically",
    config=UpdaterConfig,
)
class NaiveUpdater(LLMModule):
    name: ClassVar[str] = "updater"
    options: UpdaterConfig

    def __init__(self, options: UpdaterConfig | None = None):
        super().__init__(options or UpdaterConfig())

    def related(self, store: MemoryStore, facts: list[Fact]) -> list[MemoryItem]:
        """Existing memories near any new fact, de-duplicated, best hits first."""
        if not facts or self.options.related_k == 0 or self.options.max_related == 0 or store.count() == 0:
            return []
        seen: dict[str, MemoryItem] = {}
        for hits in store.search_many([f.text for f in facts], k=self.options.related_k):
            for hit in hits:
                seen.setdefault(hit.item.id, hit.item)
        return list(seen.values())[: self.options.max_related]

    def user_text(self, request: UpdateRequest) -> str:
        facts = "\n".join(json.dumps({"fact": f.text}, ensure_ascii=False) for f in request.facts) or "(none)"
        return self.options.template.format(memories=render_memories(request.related), facts=facts)

    def generate(
        self,
        requests: list[UpdateRequest],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = True,
        trainable: bool = True,
    ) -> list[UpdateResult]:
        """Decide and apply the operations of every request; ONE backend call for all of them."""
        prompts, generations = self.call_backend(requests, backend, params, train=train)
        return [
            self.apply_response(request, prompt, generation, train=train, trainable=trainable)
            for request, prompt, generation in zip(requests, prompts, generations)
        ]

    def apply_response(
        self, request: UpdateRequest, prompt: ChatPrompt, generation: Any, *, train: bool, trainable: bool = True
    ) -> UpdateResult:
        trajectory = request.trajectory
        self.record(trajectory, "update", prompt, generation, train=train, trainable=trainable)
        id_map = {str(i): item.id for i, item in enumerate(request.related)}
        ops, report = parse_operations(prompt.assistant_prefix + generation.text, id_map, max_ops=self.options.max_ops)
        trajectory.count("update_calls")
        trajectory.count("update_parsed", float(report.parsed))
        self.count_report(trajectory, report)
        idle = not any(o.op != "NONE" for o in ops)
        if (not report.parsed and self.options.fallback != "none") or (
            idle and self.options.fallback == "add_if_empty"
        ):
            ops = [Operation("ADD", text=f.text, key=f.key or None, type=f.type) for f in request.facts]
            trajectory.count("update_fallback")
        if request.date:
            for o in ops:
                if o.op == "ADD" and not o.tags:
                    o.tags = [request.date]
        result, entries = apply_operations(request.store, ops, scope=request.scope, actor=self.name)
        if not result.ok:
            trajectory.count("apply_failed")
        for o in ops:
            trajectory.count(f"op_{o.op.lower()}")
        for entry in entries:
            trajectory.trace.append({"kind": "op", **request.trace, **entry})
        if not entries:
            trajectory.trace.append({"kind": "op", **request.trace, "op": "NONE", "parsed": report.parsed})
        return UpdateResult(ops, result, report)
