"""LLMModule: the shared part of modules that make one batched LLM call per step.

The extractor, updater and reranker all render one chat prompt per request (optional system
message, the user text from their template, an assistant prefix), cap the sampling params with
their own ``max_tokens`` / ``stop`` options, send every prompt in ONE ``backend.generate`` and
record each generation on its request's trajectory as a ``ModelCall``. Only the user text and the
reading of the response differ, so subclasses define ``user_text`` and ``generate``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from memfactory.calls import model_call, require_token_backend
from memfactory.json_repair import ParseReport
from memfactory.modules.base import MemoryModule
from memfactory.types import ChatPrompt, Generation, SamplingParams, Trajectory


class LLMModule(MemoryModule):
    """Options must have ``system_prompt``, ``assistant_prefix``, ``max_tokens`` and ``stop``."""

    def user_text(self, request: Any) -> str:
        """The user message of one request (the module's template, filled in)."""
        raise NotImplementedError

    def prompt(self, request: Any) -> ChatPrompt:
        opts = self.options
        system = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
        return ChatPrompt(
            [*system, {"role": "user", "content": self.user_text(request)}], assistant_prefix=opts.assistant_prefix
        )

    def call_params(self, params: SamplingParams) -> SamplingParams:
        return replace(
            params, max_new_tokens=min(params.max_new_tokens, self.options.max_tokens), stop=list(self.options.stop)
        )

    def call_backend(
        self, requests: list[Any], backend: Any, params: SamplingParams, *, train: bool
    ) -> tuple[list[ChatPrompt], list[Generation]]:
        """One prompt per request, all in ONE backend call; no call (and no backend check) for none."""
        if not requests:
            return [], []
        if train:
            require_token_backend(backend)
        prompts = [self.prompt(r) for r in requests]
        generations = backend.generate(prompts, self.call_params(params))
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
        return prompts, generations

    def record(
        self,
        trajectory: Trajectory,
        kind: str,
        prompt: ChatPrompt,
        generation: Generation,
        *,
        train: bool,
        trainable: bool = True,
    ) -> None:
        """Append the call as ``<module name>.<kind>`` (exact token ids in train mode)."""
        trajectory.calls.append(model_call(f"{self.name}.{kind}", prompt, generation, train=train, trainable=trainable))

    @staticmethod
    def count_report(trajectory: Trajectory, report: ParseReport) -> None:
        """Unterminated thinking and the parser's warnings, as counters."""
        if not report.terminated:
            trajectory.count("unterminated_think")
        for name, amount in report.warnings.items():
            trajectory.count(name, amount)

    def generate(
        self, requests: list[Any], backend: Any, params: SamplingParams, *, train: bool = True, trainable: bool = True
    ) -> list[Any]:
        raise NotImplementedError

    def rollout(self, requests: list[Any], backend: Any, params: SamplingParams) -> list[Any]:
        """Trainable calls with the training backend (the reward comes from the episode's answer)."""
        return self.generate(requests, backend, params, train=True)

    def inference(self, requests: list[Any], backend: Any, params: SamplingParams) -> list[Any]:
        """Calls with any backend; recorded for display only."""
        return self.generate(requests, backend, params, train=False)
