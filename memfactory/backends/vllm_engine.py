"""Optional in-process vLLM engine for fast rollouts on a GPU.

vLLM pins its own torch (and an older transformers) so it lives in a separate GPU environment:
``pip install 'memfactory[vllm]'``. Without it, constructing this backend raises a
MemFactoryError saying so; nothing here imports vllm at module import time.

Like the ``hf`` backend it renders the chat template itself and hands vLLM token ids, so the
returned ``prompt_ids`` / ``response_ids`` / ``logprobs`` are exactly what was sampled (no decode
and re-tokenise) and ``assistant_prefix`` is honoured. ``load_weights`` pushes the trainer's
weights into the engine in TRL's colocate style.

Tested here only for the import guard: the machines this project is built on have no GPU and no
vllm. The API used (``LLM.generate`` with ``{"prompt_token_ids": ...}`` prompts, ``SamplingParams``
with ``logprobs=0``, ``llm_engine.model_executor.driver_worker.model_runner.model.load_weights``
and ``reset_prefix_cache``) is the one TRL 1.x uses with vLLM's V1 engine.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import ChatPrompt, Generation, SamplingParams

NOT_INSTALLED = (
    "vLLM is not installed: pip install 'memfactory[vllm]' in a separate GPU environment (vllm pins its own torch)"
)


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="Share of GPU memory vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + response in tokens")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    enable_sleep_mode: bool = Field(False, description="Free GPU memory between rollouts (colocated training)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _require_vllm() -> Any:
    if not vllm_available():
        raise MemFactoryError(NOT_INSTALLED)
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. a torch mismatch) is a setup problem, not a bug here
        raise MemFactoryError(f"vLLM is installed but failed to import ({type(exc).__name__}: {exc}); {NOT_INSTALLED}") from None
    return vllm


def _single_process_rendezvous() -> None:
    """external_launcher expects torchrun's variables; a lone process is rank 0 of 1."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def _dtype(name: str) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(name, "auto")


@register(
    "backend",
    "vllm",
    description="In-process vLLM engine on a GPU (optional extra memfactory[vllm]): fast rollouts with token ids and log-probs",
    config=VLLMOptions,
)
class VLLMBackend:
    """A thin wrapper over ``vllm.LLM``: same generate contract as the ``hf`` backend."""

    def __init__(
        self,
        model: str,
        *,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        seed: int = 0,
        enable_thinking: bool = False,
        name: str = "vllm",
        **engine_kwargs: Any,
    ) -> None:
        vllm = _require_vllm()
        self.name = name
        self.enable_thinking = enable_thinking
        # external_launcher keeps the worker in this process, so load_weights can reach the model.
        if engine_kwargs.setdefault("distributed_executor_backend", "external_launcher") == "external_launcher":
            _single_process_rendezvous()
        self.llm = vllm.LLM(model=model, dtype=_dtype(dtype), seed=seed, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm

    @classmethod
    def from_config(cls, cfg: ModelConfig, **options: Any) -> VLLMBackend:
        """``model.path`` is a local folder or hub id vLLM can load (``tiny://`` models are HF-only)."""
        _require_vllm()
        if cfg.path.startswith("tiny://"):
            raise MemFactoryError(f"model.path: {cfg.path} is built for the hf backend; vLLM needs a saved model folder")
        if cfg.checkpoint:
            raise MemFactoryError("model.checkpoint: merge the checkpoint into a model folder and point model.path at it for vLLM")
        opts = VLLMOptions.model_validate(options)
        return cls(cfg.path, dtype=cfg.dtype, seed=cfg.seed, enable_thinking=cfg.enable_thinking, **opts.model_dump(exclude_none=True))

    @property
    def exposes_tokens(self) -> bool:
        return True

    def render_prompt(self, prompt: ChatPrompt) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )
        return self.tokenizer(text + prompt.assistant_prefix, add_special_tokens=False)["input_ids"]

    def sampling_params(self, params: SamplingParams) -> Any:
        """MemFactory SamplingParams -> vllm.SamplingParams (stop text kept, sampled-token log-probs)."""
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,  # the sampled token's own log-prob only
        )

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        rendered = [self.render_prompt(p) for p in prompts]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in rendered], sampling_params=self.sampling_params(params), use_tqdm=False
        )
        generations = []
        for ids, out in zip(rendered, outputs):
            completion = out.outputs[0]
            token_ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, token_ids)]
            generations.append(
                Generation(
                    text=completion.text,
                    prompt_ids=list(ids),
                    response_ids=token_ids,
                    logprobs=logprobs,
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        return generations

    def load_weights(self, state_dict: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Push policy weights into the engine (TRL colocate style), then drop the prefix cache."""
        items = state_dict.items() if isinstance(state_dict, Mapping) else state_dict
        try:
            model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise MemFactoryError(
                "this vLLM engine does not expose its model in-process; construct it with "
                "distributed_executor_backend='external_launcher' (the default here) or set VLLM_ENABLE_V1_MULTIPROCESSING=0"
            ) from None
        model.load_weights(list(items))
        self.llm.reset_prefix_cache()
