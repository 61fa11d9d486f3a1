"""The no-memory baseline: one call with the (window-truncated) context and the question.

Also the agent of the CPU learning demo. REFERENCE.md's measured recipe for SmolLM2-135M:
a one-shot worked example, the answer prefix ``\\boxed{`` and a stop at ``}`` (the stop
strings come from the sampling params and are passed through untouched).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.agents.base import Agent
from memfactory.agents.common import check_run
from memfactory.backends.base import Backend
from memfactory.calls import model_call, response_tokens
from memfactory.modules.extractor import check_placeholders
from memfactory.registry import register
from memfactory.text import codec_for, context_of, strip_thinking, truncate_text
from memfactory.types import ChatPrompt, Sample, SamplingParams, Trajectory

DIRECT_TEMPLATE = """Read the documents below and answer the question. Put the answer in \\boxed{{}}.

{context}

Question: {question}"""


class OneShot(BaseModel):
    """A worked example shown as one user/assistant exchange before the real question."""

    model_config = ConfigDict(extra="forbid")

    context: str = Field(description="The example's documents")
    question: str = Field(description="The example's question")
    answer: str = Field(description="The example's assistant turn, verbatim (e.g. \\boxed{Paris})")


class DirectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_context_tokens: int = Field(
        4096, ge=0, le=1_048_576, description="Context window in backend tokens; longer contexts are truncated"
    )
    truncate: Literal["middle", "head", "tail"] = Field(
        "middle", description="Which part of an over-long context is dropped"
    )
    prompt_template: str = Field(DIRECT_TEMPLATE, description="User message with {context} and {question}")
    answer_prefix: str = Field("", description="Text that opens the assistant turn, e.g. \\boxed{")
    system_prompt: str = Field("", description="Optional system message")
    one_shot: OneShot | None = Field(None, description="Optional worked example before the real question")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_placeholders(value, {"question"}, {"context", "question"}, "prompt_template")


@register(
    "agent",
    "direct",
    description="No-memory baseline: the context cut to a token window plus the question, one call",
    config=DirectConfig,
)
class DirectAgent(Agent):
    options: DirectConfig

    def __init__(self, modules: dict | None = None, options: DirectConfig | None = None):
        super().__init__(modules or {}, options or DirectConfig())

    def prompt(self, context: str, question: str) -> ChatPrompt:
        opts = self.options
        messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
        if opts.one_shot is not None:
            example = opts.prompt_template.format(context=opts.one_shot.context, question=opts.one_shot.question)
            messages += [{"role": "user", "content": example}, {"role": "assistant", "content": opts.one_shot.answer}]
        messages.append({"role": "user", "content": opts.prompt_template.format(context=context, question=question)})
        return ChatPrompt(messages, assistant_prefix=opts.answer_prefix)

    def run(
        self,
        samples: list[Sample],
        backend: Backend,
        *,
        params: SamplingParams,
        group_size: int = 1,
        train: bool = False,
    ) -> list[Trajectory]:
        if not check_run(samples, backend, group_size, train):
            return []
        codec = codec_for(backend)
        trajectories: list[Trajectory] = []
        prompts: list[ChatPrompt] = []
        for index, sample in enumerate(samples):
            # Tokenise once per sample; the group members share the prompt.
            context, dropped = truncate_text(
                context_of(sample), self.options.max_context_tokens, codec, self.options.truncate
            )
            prompt = self.prompt(context, sample.question)
            for _ in range(group_size):
                trajectory = Trajectory(sample=sample, group=index)
                if dropped:
                    trajectory.count("context_tokens_dropped", dropped)
                trajectories.append(trajectory)
                prompts.append(prompt)
        generations = backend.generate(prompts, params)
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
        for trajectory, prompt, generation in zip(trajectories, prompts, generations):
            trajectory.calls.append(model_call("direct.answer", prompt, generation, train=train))
            trajectory.answer = prompt.assistant_prefix + generation.text
            if not strip_thinking(trajectory.answer)[1]:
                trajectory.count("unterminated_think")
            trajectory.trace.append({"step": 0, "answer": trajectory.answer, "tokens": response_tokens(generation)})
        return trajectories
