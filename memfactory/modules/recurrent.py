"""MemAgent's recurrent memory: read a long context chunk by chunk, overwrite a memory each time.

The context is tokenised once with the backend's tokenizer (chars/4 pieces for a backend
without one, see ``memfactory.text.CharCodec``) and cut into ``chunk_tokens`` pieces. For every
chunk the model gets the problem, the previous memory and the chunk, and its answer (thinking
dropped) becomes the new memory. A final call answers the problem from the memory alone.

Unlike the published code, an over-long context is truncated (``max_chunks``, ``truncate``)
instead of failing an assertion, and an update that never closes its think block keeps the
previous memory and is counted (``unterminated_think``) instead of being silently clipped.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.calls import model_call, require_token_backend, response_tokens
from memfactory.modules.base import MemoryModule
from memfactory.modules.extractor import check_placeholders
from memfactory.registry import register
from memfactory.text import Codec, chunk_sequence, codec_for, context_of, strip_thinking, truncate_sequence
from memfactory.types import ChatPrompt, Generation, Sample, SamplingParams, Trajectory

# MemAgent's published prompt wording (BytedTsinghua-SIA/MemAgent), kept as the default text.
NO_MEMORY = "No previous memory"

UPDATE_TEMPLATE = """You are presented with a problem, a section of an article that may contain the answer to the problem, and a previous memory. Please read the provided section carefully and update the memory with the new information that helps to answer the problem. Be sure to retain all relevant details from the previous memory while adding any new, useful information.

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Updated memory:
"""

ANSWER_TEMPLATE_BOXED = """You are presented with a problem and a previous memory. Please answer the problem based on the previous memory and put the answer in \\boxed{{}}.

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

Your answer:
"""

ANSWER_TEMPLATE_ANSWER_IS = """You are presented with a problem and a previous memory. Please answer the problem based on the previous memory and format your response as follows "Therefore, the answer is (insert answer here)".

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

Your answer:
"""

ANSWER_TEMPLATES = {"boxed": ANSWER_TEMPLATE_BOXED, "answer_is": ANSWER_TEMPLATE_ANSWER_IS}


def _check_template(template: str, required: set[str], allowed: set[str], what: str) -> str:
    """A template must format with our placeholder names and hold the problem; say which one is wrong if not."""
    check_placeholders(template, required, allowed, what)
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if not names & {"prompt", "question"}:
        raise ValueError(f"{what} must contain the problem as {{prompt}} or {{question}}")
    return template


class RecurrentConfig(BaseModel):
    """Options of the recurrent memory module (defaults follow MemAgent)."""

    model_config = ConfigDict(extra="forbid")

    chunk_tokens: int = Field(5000, ge=1, le=1_048_576, description="Context tokens per chunk (one memory update each)")
    memory_tokens: int = Field(1024, ge=1, le=1_048_576, description="Cap on the new tokens of one memory update")
    answer_tokens: int = Field(1024, ge=1, le=1_048_576, description="Cap on the new tokens of the final answer")
    max_chunks: int | None = Field(
        None, ge=1, le=1_048_576, description="At most this many chunks; longer contexts are truncated (None = no cap)"
    )
    truncate: Literal["middle", "head", "tail"] = Field(
        "middle", description="Which part of an over-long context is dropped"
    )
    memory_init: str = Field(NO_MEMORY, description="The memory before the first chunk")
    update_template: str = Field(
        UPDATE_TEMPLATE, description="Memory-update prompt with {prompt} (or {question}), {memory}, {chunk}"
    )
    answer_format: Literal["boxed", "answer_is"] = Field(
        "boxed", description="Which MemAgent final-answer wording to use when answer_template is unset"
    )
    answer_template: str | None = Field(
        None,
        description="Final-answer prompt with {prompt} (or {question}) and {memory}; None = MemAgent's for answer_format",
    )
    answer_prefix: str = Field(
        "",
        description="Text that opens the final assistant turn, e.g. \\boxed{ for small models; a non-empty "
        "value wins over a sample's own meta['answer_prefix'] (see sample_answer_prefix)",
    )
    sample_answer_prefix: bool = Field(
        False,
        description="Opt in: when answer_prefix is empty, open the final turn with the sample's own "
        "meta['answer_prefix'] (RULER sets carry one). Off by default, as MemAgent's memory-agent eval",
    )
    system_prompt: str = Field("", description="Optional system message for every call")
    update_stop: list[str] = Field(
        default_factory=list,
        description="Stop strings for memory updates (the sampling stop strings apply to the answer only)",
    )

    @field_validator("update_template")
    @classmethod
    def _update_template(cls, value: str) -> str:
        return _check_template(value, {"memory", "chunk"}, {"prompt", "question", "memory", "chunk"}, "update_template")

    @field_validator("answer_template")
    @classmethod
    def _answer_template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _check_template(value, {"memory"}, {"prompt", "question", "memory"}, "answer_template")

    @property
    def final_template(self) -> str:
        return self.answer_template if self.answer_template is not None else ANSWER_TEMPLATES[self.answer_format]


@dataclass
class MemoryState:
    """One episode in progress: its chunks, the current memory and how far it has read."""

    sample: Sample
    chunks: list[str]
    trajectory: Trajectory
    memory: str
    step: int = 0
    context_tokens: int = 0
    dropped_tokens: int = 0

    @property
    def done(self) -> bool:
        return self.step >= len(self.chunks)


@register(
    "module",
    "recurrent",
    description="MemAgent recurrent memory: chunk the context, overwrite a memory per chunk, answer from memory",
    config=RecurrentConfig,
)
class RecurrentMemoryModule(MemoryModule):
    name: ClassVar[str] = "recurrent"
    options: RecurrentConfig

    def __init__(self, options: RecurrentConfig | None = None):
        super().__init__(options or RecurrentConfig())

    # ------------------------------------------------------------------ context

    def split(self, context: str, codec: Codec) -> tuple[list[str], int, int]:
        """``(chunk_texts, context_tokens, dropped_tokens)`` for one context, tokenised once."""
        pieces = codec.encode(context) if context else []
        total = len(pieces)
        opts = self.options
        if opts.max_chunks is not None:
            pieces = truncate_sequence(pieces, opts.max_chunks * opts.chunk_tokens, opts.truncate)
        chunks = [codec.decode(piece) for piece in chunk_sequence(pieces, opts.chunk_tokens)]
        return chunks, total, total - len(pieces)

    def init_states(self, samples: list[Sample], backend: Any, group_size: int = 1) -> list[MemoryState]:
        """Each sample ``group_size`` times, sample by sample; the group members share its chunks."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        codec = codec_for(backend)
        states = []
        for index, sample in enumerate(samples):
            chunks, total, dropped = self.split(context_of(sample), codec)
            for _ in range(group_size):
                trajectory = Trajectory(sample=sample, group=index)
                if dropped:
                    trajectory.count("context_tokens_dropped", dropped)
                states.append(MemoryState(sample, chunks, trajectory, self.options.memory_init, 0, total, dropped))
        return states

    # ------------------------------------------------------------------ prompts

    def _messages(self, content: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.options.system_prompt}] if self.options.system_prompt else []
        return [*system, {"role": "user", "content": content}]

    def update_prompt(self, state: MemoryState) -> ChatPrompt:
        question = state.sample.question
        text = self.options.update_template.format(
            prompt=question, question=question, memory=state.memory, chunk=state.chunks[state.step]
        )
        return ChatPrompt(self._messages(text))

    def answer_prefix(self, sample: Sample) -> str:
        """The configured ``answer_prefix``; when empty and ``sample_answer_prefix`` is on, the
        sample's ``meta["answer_prefix"]``; else nothing.

        RULER records carry an answer prefix (e.g. fwe's "Answer: ... the three most frequently
        appeared words are:"), but MemAgent's memory-agent eval never injects it, so using it is
        opt-in; an explicit ``answer_prefix`` overrides it.
        """
        if self.options.answer_prefix:
            return self.options.answer_prefix
        if not self.options.sample_answer_prefix:
            return ""
        own = sample.meta.get("answer_prefix") if isinstance(sample.meta, dict) else None
        return own if isinstance(own, str) else ""

    def answer_prompt(self, state: MemoryState) -> ChatPrompt:
        question = state.sample.question
        text = self.options.final_template.format(prompt=question, question=question, memory=state.memory)
        return ChatPrompt(self._messages(text), assistant_prefix=self.answer_prefix(state.sample))

    def update_params(self, params: SamplingParams) -> SamplingParams:
        return replace(
            params,
            max_new_tokens=min(params.max_new_tokens, self.options.memory_tokens),
            stop=list(self.options.update_stop),
        )

    def answer_params(self, params: SamplingParams) -> SamplingParams:
        return replace(params, max_new_tokens=min(params.max_new_tokens, self.options.answer_tokens))

    # ------------------------------------------------------------------ the three ways to run

    def generate(
        self,
        states: list[MemoryState],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = True,
        trainable: bool = True,
    ) -> list[MemoryState]:
        """One memory update for every unfinished state, in ONE backend call; returns those states."""
        live = [s for s in states if not s.done]
        if not live:
            return []
        if train:
            require_token_backend(backend)
        prompts = [self.update_prompt(s) for s in live]
        generations = backend.generate(prompts, self.update_params(params))
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
        for state, prompt, generation in zip(live, prompts, generations):
            self.apply_update(state, prompt, generation, train=train, trainable=trainable)
        return live

    def apply_update(
        self, state: MemoryState, prompt: ChatPrompt, generation: Generation, *, train: bool, trainable: bool = True
    ) -> None:
        """Record the call; the response (thinking dropped) overwrites the memory.

        An unterminated think block keeps the previous memory and is counted, never clipped.
        """
        trajectory = state.trajectory
        trajectory.calls.append(model_call(f"{self.name}.update", prompt, generation, train=train, trainable=trainable))
        memory, terminated = strip_thinking(generation.text)
        if terminated:
            state.memory = memory
        else:
            trajectory.count("unterminated_think")
        if generation.finish_reason == "length":
            trajectory.count("update_hit_token_cap")
        trajectory.trace.append(
            {
                "step": state.step,
                "chunk": state.step,
                "memory": state.memory,
                "tokens": response_tokens(generation),
                "kept_previous": not terminated,
            }
        )
        state.step += 1

    def answer(
        self,
        states: list[MemoryState],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = True,
        trainable: bool = True,
    ) -> list[Trajectory]:
        """The final answer from the memory alone, one backend call for all states."""
        if not states:
            return []
        if train:
            require_token_backend(backend)
        prompts = [self.answer_prompt(s) for s in states]
        generations = backend.generate(prompts, self.answer_params(params))
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
        for state, prompt, generation in zip(states, prompts, generations):
            trajectory = state.trajectory
            trajectory.calls.append(
                model_call(f"{self.name}.answer", prompt, generation, train=train, trainable=trainable)
            )
            trajectory.answer = prompt.assistant_prefix + generation.text
            if not strip_thinking(trajectory.answer)[1]:
                trajectory.count("unterminated_think")
            trajectory.trace.append(
                {"step": state.step, "answer": trajectory.answer, "tokens": response_tokens(generation)}
            )
        return [s.trajectory for s in states]

    def run(
        self,
        states: list[MemoryState],
        backend: Any,
        params: SamplingParams,
        *,
        train: bool,
        credit: Literal["all_calls", "final_only"] = "all_calls",
    ) -> list[Trajectory]:
        """Updates until every state has read all its chunks (batched per chunk index), then answer."""
        if train:
            require_token_backend(backend)
        while self.generate(states, backend, params, train=train, trainable=credit == "all_calls"):
            pass
        return self.answer(states, backend, params, train=train)

    def rollout(
        self,
        states: list[MemoryState],
        backend: Any,
        params: SamplingParams,
        *,
        credit: Literal["all_calls", "final_only"] = "all_calls",
    ) -> list[Trajectory]:
        """Whole episodes with the training backend; every call keeps its exact ids and log-probs."""
        return self.run(states, backend, params, train=True, credit=credit)

    def inference(self, states: list[MemoryState], backend: Any, params: SamplingParams) -> list[MemoryState]:
        """Whole episodes with any backend; calls are recorded for display, none trainable."""
        self.run(states, backend, params, train=False)
        return states
