"""NaiveExtractor: dialogue turns in, a JSON list of memory facts ``{key, value, type, tags}`` out.

One backend call per request, all requests of a step batched into one ``backend.generate``. The
response is read with ``memory_ops.parse_facts`` (code fences, thinking, prose and minor JSON damage
are tolerated; ``fallback: lines`` reads a non-JSON response line by line). Every call is recorded on its trajectory (exact token ids in train mode) and counted:
``extract_calls`` and ``extract_parsed`` (what the ``memory_format`` reward reads), plus parse warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.calls import model_call, require_token_backend
from memfactory.modules.base import MemoryModule
from memfactory.modules.memory_ops import Fact, ParseReport, parse_facts
from memfactory.registry import register
from memfactory.text import strip_thinking
from memfactory.types import ChatPrompt, SamplingParams, Trajectory

EXTRACT_TEMPLATE = """Read this part of a conversation ({date}) and write down the facts worth remembering about the people: who they are, where they live, what they like, what they own, what happened and when. A fact that changed should say how it is now.

{dialogue}

Answer with a JSON list only, one object per fact: [{{"key": "<topic>", "value": "<the fact as a short sentence, with the person's name>", "type": "fact", "tags": ["<person>"]}}]. Write [] if there is nothing to remember."""


def check_placeholders(template: str, required: set[str], allowed: set[str], what: str) -> str:
    """A prompt template must format with exactly our placeholder names."""
    import string

    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as exc:
        raise ValueError(
            f"{what} is not a valid format string ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
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
    turns_per_call: int = Field(8, ge=1, description="Dialogue turns shown per extraction call")
    max_tokens: int = Field(256, ge=1, description="Cap on the new tokens of one extraction")
    max_facts: int = Field(16, ge=1, description="Facts kept per call (the rest are dropped and counted)")
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
    for line in visible.splitlines():
        line = line.strip().strip("[]{},\"'").strip()
        if len(line) > 3 and line not in seen:
            seen.append(line[:500])
    return [Fact(value=line) for line in seen[:limit]]


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
class NaiveExtractor(MemoryModule):
    name: ClassVar[str] = "extractor"
    options: ExtractorConfig

    def __init__(self, options: ExtractorConfig | None = None):
        super().__init__(options or ExtractorConfig())

    def prompt(self, request: ExtractRequest) -> ChatPrompt:
        opts = self.options
        text = opts.template.format(dialogue=request.dialogue, date=request.date or "date unknown")
        system = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
        return ChatPrompt([*system, {"role": "user", "content": text}], assistant_prefix=opts.assistant_prefix)

    def call_params(self, params: SamplingParams) -> SamplingParams:
        return replace(
            params, max_new_tokens=min(params.max_new_tokens, self.options.max_tokens), stop=list(self.options.stop)
        )

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
        if not requests:
            return []
        if train:
            require_token_backend(backend)
        prompts = [self.prompt(r) for r in requests]
        generations = backend.generate(prompts, self.call_params(params))
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
        results = []
        for request, prompt, generation in zip(requests, prompts, generations):
            trajectory = request.trajectory
            trajectory.calls.append(
                model_call(f"{self.name}.extract", prompt, generation, train=train, trainable=trainable)
            )
            facts, report = parse_facts(prompt.assistant_prefix + generation.text, max_facts=self.options.max_facts)
            if not report.parsed and self.options.fallback == "lines":
                facts = lines_as_facts(generation.text, self.options.max_facts)
                trajectory.count("extract_fallback")
            trajectory.count("extract_calls")
            trajectory.count("extract_parsed", float(report.parsed))
            if not report.terminated:
                trajectory.count("unterminated_think")
            for name, amount in report.warnings.items():
                trajectory.count(name, amount)
            trajectory.trace.append(
                {"kind": "extract", **request.trace, "parsed": report.parsed, "facts": [f.to_dict() for f in facts]}
            )
            results.append(ExtractResult(facts, report))
        return results

    def rollout(self, requests: list[ExtractRequest], backend: Any, params: SamplingParams) -> list[ExtractResult]:
        """Trainable extraction with the training backend (the reward comes from the episode's answer)."""
        return self.generate(requests, backend, params, train=True)

    def inference(self, requests: list[ExtractRequest], backend: Any, params: SamplingParams) -> list[ExtractResult]:
        """Extraction with any backend; calls are recorded for display only."""
        return self.generate(requests, backend, params, train=False)
