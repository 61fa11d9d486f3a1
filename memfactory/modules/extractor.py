"""NaiveExtractor: dialogue turns in, a JSON list of memory facts ``{key, value, type, tags}`` out.

One backend call per request, all requests of a step batched into one ``backend.generate``. The
response is read with ``memory_ops.parse_facts`` (code fences, thinking, prose and minor JSON damage
are tolerated; ``fallback: lines`` reads a non-JSON response line by line). Every call is recorded on its trajectory (exact token ids in train mode) and counted:
``extract_calls`` and ``extract_parsed`` (what the ``memory_format`` reward reads), plus parse warnings.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.json_repair import ParseReport
from memfactory.modules.llm_module import LLMModule
from memfactory.modules.memory_ops import Fact, parse_facts, valid_text
from memfactory.registry import register
from memfactory.text import strip_thinking
from memfactory.types import SamplingParams, Trajectory

EXTRACT_TEMPLATE = """Read this part of a conversation ({date}) and write down the facts worth remembering about the people: who they are, where they live, what they like, what they own, what happened and when. A fact that changed should say how it is now.

{dialogue}

Answer with a JSON list only, one object per fact: [{{"key": "<topic>", "value": "<the fact as a short sentence, with the person's name>", "type": "fact", "tags": ["<person>"]}}]. Write [] if there is nothing to remember."""


def check_placeholders(template: str, required: set[str], allowed: set[str], what: str) -> str:
    """A prompt template must format with exactly our placeholder names."""
    try:
        fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(template) if n is not None]
    except ValueError as exc:
        raise ValueError(
            f"{what} is not a valid format string ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    # A format spec or conversion ("{memory:d}", "{memory!x}", "{memory:{chunk}}") passes the names
    # check but raises when the prompt is built, mid-rollout: placeholders are plain names only.
    fancy = sorted({"{" + n + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                    for n, spec, conv in fields if spec or conv})
    if fancy:
        raise ValueError(
            f"{what}: placeholders take no format spec or conversion, got {', '.join(fancy)[:200]}; "
            "write a literal brace as {{ or }}"
        )
    names = {n for n, _, _ in fields}
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(
            f"{what} has unknown placeholder(s) {unknown}; use {', '.join('{' + a + '}' for a in sorted(allowed))}"
        )
    missing = sorted(required - names)
    if missing:
        raise ValueError(f"{what} must contain {', '.join('{' + m + '}' for m in missing)}")
    return template


class ExtractorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(EXTRACT_TEMPLATE, description="Extraction prompt with {dialogue} and optionally {date}")
    turns_per_call: int = Field(8, ge=1, le=65_536, description="Dialogue turns shown per extraction call")
    max_tokens: int = Field(256, ge=1, le=1_048_576, description="Cap on the new tokens of one extraction")
    max_facts: int = Field(16, ge=1, le=65_536, description="Facts kept per call (the rest are dropped and counted)")
    fallback: Literal["none", "lines"] = Field(
        "none", description="What a response without JSON gives: no facts, or one fact per non-empty line (counted)"
    )
    assistant_prefix: str = Field("", description="Text that opens the assistant turn, e.g. '[' to force a JSON list")
    stop: list[str] = Field(default_factory=list, description="Stop strings for extraction calls")
    system_prompt: str = Field("", description="Optional system message")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_placeholders(value, {"dialogue"}, {"dialogue", "date"}, "extractor template")


def lines_as_facts(text: str, limit: int) -> list[Fact]:
    """The fallback reading of a non-JSON response: each distinct non-empty line (thinking dropped) is a fact."""
    visible, _ = strip_thinking(text)
    seen: list[str] = []
    known: set[str] = set()  # = set(seen): a list lookup made a long response quadratic
    for line in visible.splitlines():
        if len(seen) >= limit:
            break
        line = valid_text(line.strip().strip("[]{},\"'").strip())  # no lone surrogates into the bank
        if len(line) > 3 and line not in known:
            seen.append(line[:500])
            known.add(line[:500])
    return [Fact(value=line) for line in seen]


@dataclass
class ExtractRequest:
    trajectory: Trajectory
    dialogue: str
    date: str = ""
    trace: dict[str, Any] = field(default_factory=dict)  # extra keys for the trace entry (session, step)


@dataclass
class ExtractResult:
    facts: list[Fact]
    report: ParseReport


@register(
    "module",
    "extractor",
    description="Memory extractor: dialogue turns -> JSON list of facts {key, value, type, tags}",
    config=ExtractorConfig,
)
class NaiveExtractor(LLMModule):
    name: ClassVar[str] = "extractor"
    options: ExtractorConfig

    def __init__(self, options: ExtractorConfig | None = None):
        super().__init__(options or ExtractorConfig())

    def user_text(self, request: ExtractRequest) -> str:
        return self.options.template.format(dialogue=request.dialogue, date=request.date or "date unknown")

    def generate(
        self,
        requests: list[ExtractRequest],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = True,
        trainable: bool = True,
    ) -> list[ExtractResult]:
        """Extract facts for every request in ONE backend call."""
        prompts, generations = self.call_backend(requests, backend, params, train=train)
        results = []
        for request, prompt, generation in zip(requests, prompts, generations):
            trajectory = request.trajectory
            self.record(trajectory, "extract", prompt, generation, train=train, trainable=trainable)
            facts, report = parse_facts(prompt.assistant_prefix + generation.text, max_facts=self.options.max_facts)
            if not report.parsed and self.options.fallback == "lines":
                facts = lines_as_facts(generation.text, self.options.max_facts)
                trajectory.count("extract_fallback")
            trajectory.count("extract_calls")
            trajectory.count("extract_parsed", float(report.parsed))
            self.count_report(trajectory, report)
            trajectory.trace.append(
                {"kind": "extract", **request.trace, "parsed": report.parsed, "facts": [f.to_dict() for f in facts]}
            )
            results.append(ExtractResult(facts, report))
        return results
