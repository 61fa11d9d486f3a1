"""A local transformers model as a backend: batched generation with left padding and log-probs.

The trainer needs, for every sampled token, its log-prob under the *sampling* model so GRPO can
form the ratio ``exp(new - old)``. We record them while ``model.generate`` runs, with a logits
processor that keeps one ``[B, V]`` log-softmax at a time (memory does not grow with the response
length or vocabulary the way ``output_logits`` does). The recorded value is the plain
temperature-scaled ``log_softmax(logits / T)`` (T = 1 when greedy), i.e. before top-p/top-k
truncation, which is exactly what the trainer recomputes in its forward pass.

Prefill once per group: GRPO asks for ``group_size`` samples of each prompt, so a micro-batch
often holds the same prompt many times (the direct agent always; MemAgent's first chunk and any
turn whose prompts coincide). Each distinct prompt is then prefilled once (all but its last
token), its KV cache is repeated for the rows that share it, and ``generate`` continues from
that cache: the same tokens and log-probs as prefilling every row (the sampling RNG is consumed
identically; only float rounding of a batched prefill can differ), at a fraction of the prompt
compute. ``shared_prefill=False`` turns it off; ``prefill_stats`` counts rows and prefills.

Decoding (``model.options.decode``): ``eager`` grows a ``DynamicCache`` and runs the model's
Python per token; ``compiled`` hands ``generate`` a static KV cache and a ``CompileConfig``, so it
runs each decode step through ``torch.compile`` (see :mod:`.static_decode`); ``auto`` (default)
is ``compiled`` on CUDA and ``eager`` elsewhere. Both give the same greedy tokens, log-probs of
the sampled tokens and prefill sharing.

torch and transformers are imported lazily so that ``memfactory list`` stays fast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends import static_decode
from memfactory.backends.model_api import base_model, cache_keyword, eval_mode, forward_parameters
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import ChatPrompt, Generation, SamplingParams

if TYPE_CHECKING:
    import torch

    from memfactory.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class GenerationBatch:
    """Tensors of one batched generation call (all on CPU), plus the decoded texts.

    ``prompt_ids`` are left-padded ``[B, P]``; ``response_ids`` are right-padded ``[B, R]`` with the
    pad token after the end; ``response_mask`` is 1 up to and including the EOS token or the token
    that completed a stop string; ``logprobs`` are 0 where the mask is 0.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    finish_reasons: list[str]
    latencies: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def to_generations(self) -> list[Generation]:
        """Unpadded python lists, one :class:`Generation` per prompt."""
        out = []
        for i in range(len(self)):
            p = self.prompt_mask[i].bool()
            r = self.response_mask[i].bool()
            out.append(
                Generation(
                    text=self.texts[i],
                    prompt_ids=self.prompt_ids[i][p].tolist(),
                    response_ids=self.response_ids[i][r].tolist(),
                    logprobs=self.logprobs[i][r].tolist(),
                    finish_reason=self.finish_reasons[i],
                    latency_s=self.latencies[i] if self.latencies else 0.0,
                )
            )
        return out


class _LogprobRecorder:
    """Logits processor that records log p(token) of each sampled token, one step behind.

    At step t it sees the token sampled at step t-1 as ``input_ids[:, -1]`` and gathers its
    log-prob from the distribution it stored then; :meth:`finish` gathers the last one.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
            self.previous = None
        if not self.steps:
            return torch.zeros(last_tokens.shape[0], 0)
        return torch.stack(self.steps, dim=1)


class _StopOnStrings:
    """Stopping criterion: a row is done once its generated text contains any stop string."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_len = prompt_len
        # Every token covers at least one byte, so a stop string lies within this many last tokens.
        self.window = max(len(s.encode("utf-8")) for s in stops) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)


def to_host(tokens: torch.Tensor, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch's sampled token ids and their log-probs (both ``[B, R]``) on the host in one
    device-to-host copy, so one sync ends a generation instead of one per tensor or row. float64 holds
    both exactly: token ids (below 2^53) and float32 log-probs, infinities included."""
    import torch

    both = torch.stack([tokens.to(torch.float64), logprobs.to(torch.float64)]).cpu()
    return both[0].long(), both[1].float()


def _first_stop_end(text: str, stops: list[str]) -> int | None:
    """End offset of the earliest-ending stop string in ``text`` (where generation would have stopped)."""
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    return min(ends) if ends else None


class HFOptions(BaseModel):
    """``model.options`` of the hf backend."""

    model_config = ConfigDict(extra="forbid")
    decode: static_decode.DecodeMode = Field(
        "auto", description="eager, or compiled (static KV cache + torch.compile); auto = compiled on CUDA, else eager"
    )
    compile_backend: static_decode.CompileBackend = Field(
        "inductor", description="torch.compile backend of compiled decoding; aot_eager traces without codegen (tests)"
    )

    @classmethod
    def of(cls, cfg: ModelConfig) -> HFOptions:
        """The options ``cfg`` gives the hf backend (defaults when it names another backend)."""
        return cls.model_validate(cfg.options if cfg.backend == "hf" else {})


@register(
    "backend",
    "hf",
    description="Local transformers model (tiny://qwen3-mini, smollm2-135m-instruct, a folder or a hub id): "
    "batched generation with left padding, token ids and log-probs for training",
    config=HFOptions,
)
class HFBackend:
    """Generation with a local ``transformers`` causal LM; the policy the trainer optimises."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        enable_thinking: bool = False,
        name: str = "hf",
        micro_batch_size: int = 32,
        shared_prefill: bool = True,
        decode: static_decode.DecodeMode = "auto",
        compile_backend: static_decode.CompileBackend = "inductor",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking
        self.name = name
        self.micro_batch_size = micro_batch_size
        self.shared_prefill = shared_prefill
        self.decode = decode
        self.compile_backend = compile_backend
        # Rows generated, and prompts actually prefilled (fewer when rows share a prompt).
        self.prefill_stats = {"rows": 0, "prefilled": 0}
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, *, device: str | None = None, micro_batch_size: int = 32, **options: Any
    ) -> HFBackend:
        """Load ``cfg`` (see :func:`memfactory.backends.sources.load_model_and_tokenizer`); CUDA when available.

        ``options`` (:class:`HFOptions`) override ``cfg.options``.
        """
        import torch

        opts = HFOptions.model_validate({**HFOptions.of(cfg).model_dump(), **options})
        model, tokenizer = load_model_and_tokenizer(cfg)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        return cls(model, tokenizer, enable_thinking=cfg.enable_thinking, micro_batch_size=micro_batch_size,
                   **opts.model_dump())

    @property
    def exposes_tokens(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def compiled(self) -> bool:
        """Whether generation decodes through a static cache and ``torch.compile`` (see ``decode``)."""
        return static_decode.compiled_on(self.decode, self.device)

    # ------------------------------------------------------------------ prompts

    def render_prompt(self, prompt: ChatPrompt) -> list[int]:
        """Chat template (with the generation prompt) + ``assistant_prefix``, tokenised once."""
        if not getattr(self.tokenizer, "chat_template", None):
            source = getattr(self.tokenizer, "name_or_path", "") or "this model"
            raise MemFactoryError(
                f"model.path {source!r}: the tokenizer has no chat template, so chat prompts cannot be "
                "rendered; use an instruct/chat model (e.g. smollm2-135m-instruct or tiny://qwen3-mini)"
            )
        text = self.tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )
        return self.tokenizer(text + prompt.assistant_prefix, add_special_tokens=False)["input_ids"]

    def eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS plus whatever the model's generation config calls EOS."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return sorted(i for i in ids if i is not None)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        return self.generate_batch(prompts, params).to_generations()

    def generate_batch(self, prompts: list[ChatPrompt], params: SamplingParams) -> GenerationBatch:
        """One completion per prompt, in order, as padded tensors (see :class:`GenerationBatch`)."""
        import torch

        rendered = [self.render_prompt(p) for p in prompts]
        # Similar lengths in one micro-batch waste less compute on padding.
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        rows: list[dict[str, Any]] = [{} for _ in rendered]
        device = self.device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with eval_mode(self.model), torch.no_grad(), \
                torch.random.fork_rng(devices=rng_devices, enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(order), self.micro_batch_size):
                chunk = order[start : start + self.micro_batch_size]
                for i, row in zip(chunk, self._generate_micro_batch([rendered[i] for i in chunk], params)):
                    rows[i] = row
        return self._assemble(rendered, rows)

    def _generate_micro_batch(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[dict[str, Any]]:
        import torch

        pad_id = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention_mask[i, width - len(ids) :] = 1
        device = self.device
        temperature = 1.0 if params.greedy else float(params.temperature)
        recorder = _LogprobRecorder(temperature)
        eos_ids = self.eos_token_ids()
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": pad_id,
            "eos_token_id": eos_ids,
            "logits_processor": [recorder],
            # Neutralise sampling defaults a model's generation_config may carry (e.g. Qwen3's top_k=20).
            "repetition_penalty": None,
            "min_p": None,
            "typical_p": None,
            "min_new_tokens": None,
            "min_length": None,
            "no_repeat_ngram_size": None,
            "suppress_tokens": None,
            "begin_suppress_tokens": None,
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_p=params.top_p, top_k=params.top_k)
        if params.stop:
            kwargs["stopping_criteria"] = [_StopOnStrings(self.tokenizer, list(params.stop), width)]
        began = time.perf_counter()
        counted = dict(self.prefill_stats)
        static = None
        if self.compiled:
            config = base_model(self.model).config
            static = static_decode.new_static_cache(config, static_decode.cache_length(width, params.max_new_tokens))
            kwargs["compile_config"] = static_decode.compile_config(device, self.compile_backend)
        shared = static is None or static_decode.takes_prefix(static)
        prefix, owner = self._shared_prefix_cache(input_ids, attention_mask, allowed=shared) or (None, None)
        if static is not None:  # the shared prefix, if any, copied into the static cache row by row
            kwargs[self._cache_keyword()] = static_decode.static_cache(static, len(prompt_ids), prefix, owner)
        elif prefix is not None:
            prefix.reorder_cache(owner)  # one copy per row
            kwargs[self._cache_keyword()] = prefix
        try:
            sequences = self.model.generate(**kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            if static is None:
                raise
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if self.decode == "compiled":
                raise MemFactoryError(
                    f"model.options.decode 'compiled': torch.compile failed ({reason}); "
                    "set model.options.decode to eager, or compile_backend to aot_eager"
                ) from exc
            log.warning("compiled decoding failed (%s); decoding eagerly from now on", reason)
            self.decode, self.prefill_stats = "eager", counted
            return self._generate_micro_batch(prompt_ids, params)
        latency = time.perf_counter() - began
        generated = sequences[:, width:]
        logprobs = recorder.finish(sequences[:, -1]) if generated.shape[1] else torch.zeros(generated.shape)
        tokens, logprobs = to_host(generated, logprobs)
        return [
            self._finish_row(row, logprobs[i], eos_ids, params, latency) for i, row in enumerate(tokens.tolist())
        ]

    def _shared_prefix_cache(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, allowed: bool = True
    ) -> tuple[Any, torch.Tensor] | None:
        """A KV cache of each distinct prompt but its last token, and ``owner``: row i's prompt.

        None when no two rows share a prompt (or sharing is off or not ``allowed``): ``generate``
        prefills as usual. Rows are left-padded to one width, so equal rows are equal prompts at
        equal positions. ``input_ids`` / ``attention_mask``: the host (CPU) tensors, compared there;
        the prefill runs on the model's device.
        """
        import torch
        from transformers import DynamicCache

        rows = [tuple(r) for r in input_ids.tolist()]
        device = self.device
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(r, len(distinct)) for r in rows]
        self.prefill_stats["rows"] += len(rows)
        if not (self.shared_prefill and allowed) or len(distinct) == len(rows) or input_ids.shape[1] < 2:
            self.prefill_stats["prefilled"] += len(rows)
            return None
        self.prefill_stats["prefilled"] += len(distinct)
        first = torch.tensor([owner.index(k) for k in range(len(distinct))])
        ids, mask = input_ids[first, :-1].to(device), attention_mask[first, :-1].to(device)
        cache = DynamicCache(config=base_model(self.model).config)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            # What generate uses for left-padded rows: positions counted over real tokens.
            "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0),
            self._cache_keyword(): cache,
            "use_cache": True,
        }
        if "logits_to_keep" in self._forward_parameters():
            kwargs["logits_to_keep"] = 1  # the prefill's logits are not needed: generate recomputes the last
        self.model(**kwargs)
        return cache, torch.tensor(owner, device=device)

    def _forward_parameters(self) -> set[str]:
        return forward_parameters(self.model)

    def _cache_keyword(self) -> str:
        return cache_keyword(self._forward_parameters()) or "past_key_values"

    def _finish_row(
        self, tokens: list[int], logprobs: torch.Tensor, eos_ids: list[int], params: SamplingParams, latency: float
    ) -> dict[str, Any]:
        """Cut one row at its first EOS or stop string; the cut token is kept (it is what was sampled)."""
        eos = set(eos_ids)
        end = next((k for k, t in enumerate(tokens) if t in eos), None)
        finish = "length"
        if end is not None:
            tokens, finish = tokens[: end + 1], "stop"
        text_tokens = tokens[:-1] if finish == "stop" else tokens
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
        text = decode(text_tokens)
        if params.stop and _first_stop_end(text, params.stop) is not None:
            # Smallest prefix whose text already holds a stop string (containment grows with the prefix).
            lo, hi = 1, len(text_tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                if _first_stop_end(decode(text_tokens[:mid]), params.stop) is not None:
                    hi = mid
                else:
                    lo = mid + 1
            tokens, finish = text_tokens[:lo], "stop"
            text = decode(tokens)
            text = text[: _first_stop_end(text, params.stop)]
        return {"ids": tokens, "logprobs": logprobs[: len(tokens)], "text": text, "finish": finish, "latency": latency}

    def _assemble(self, rendered: list[list[int]], rows: list[dict[str, Any]]) -> GenerationBatch:
        import torch

        pad_id = self.tokenizer.pad_token_id
        batch = len(rows)
        p_width = max((len(p) for p in rendered), default=0)
        r_width = max((len(r["ids"]) for r in rows), default=0)
        prompt_ids = torch.full((batch, p_width), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((batch, p_width), dtype=torch.long)
        response_ids = torch.full((batch, r_width), pad_id, dtype=torch.long)
        response_mask = torch.zeros((batch, r_width), dtype=torch.long)
        logprobs = torch.zeros((batch, r_width), dtype=torch.float32)
        for i, (ids, row) in enumerate(zip(rendered, rows)):
            if ids:
                prompt_ids[i, p_width - len(ids) :] = torch.tensor(ids)
                prompt_mask[i, p_width - len(ids) :] = 1
            n = len(row["ids"])
            if n:
                response_ids[i, :n] = torch.tensor(row["ids"])
                response_mask[i, :n] = 1
                logprobs[i, :n] = row["logprobs"].float()
        return GenerationBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=logprobs,
            texts=[r["text"] for r in rows],
            finish_reasons=[r["finish"] for r in rows],
            latencies=[r["latency"] for r in rows],
        )
