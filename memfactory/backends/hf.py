"""A local transformers model as a backend: batched generation with left padding and log-probs.

The trainer needs, for every sampled token, its log-prob under the *sampling* model so GRPO can
form the ratio ``exp(new - old)``. We record them while ``model.generate`` runs (see
:mod:`.logprobs`): the plain temperature-scaled ``log_softmax(logits / T)`` (T = 1 when greedy),
i.e. before top-p/top-k truncation, which is exactly what the trainer recomputes in its forward
pass. ``memfactory serve`` also asks for each position's top alternatives and for the prompt
tokens' log-probs (``echo``), read off the same forwards (``ServingFeatures``).

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
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends import static_decode
from memfactory.backends.base import ServingFeatures
from memfactory.backends.logprobs import LogprobRecorder, prompt_scores, to_host
from memfactory.backends.model_api import base_model, cache_keyword, eval_mode, forward_parameters
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.backends.streaming import OnText, TokenStreamer
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import Generation, Prompt, SamplingParams, TokenPrompt, TopLogprobs

if TYPE_CHECKING:
    import torch

    from memfactory.config import ModelConfig

log = logging.getLogger(__name__)


class Prefill(NamedTuple):
    """The prefix cache of a micro-batch's distinct prompts, each row's prompt index into it, and
    (when asked) each row's prompt log-probs and top lists."""

    cache: Any
    owner: torch.Tensor
    prompt: list[tuple[list[float | None], list[TopLogprobs]]] | None = None


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
    # Per row, when SamplingParams asked for them (else empty lists): see Generation.
    top_logprobs: list[list[TopLogprobs] | None] = field(default_factory=list)
    prompt_logprobs: list[tuple[list[float | None], list[TopLogprobs]] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def to_generations(self) -> list[Generation]:
        """Unpadded python lists, one :class:`Generation` per prompt."""
        out = []
        for i in range(len(self)):
            p = self.prompt_mask[i].bool()
            r = self.response_mask[i].bool()
            scored = self.prompt_logprobs[i] if self.prompt_logprobs else None
            out.append(
                Generation(
                    text=self.texts[i],
                    prompt_ids=self.prompt_ids[i][p].tolist(),
                    response_ids=self.response_ids[i][r].tolist(),
                    logprobs=self.logprobs[i][r].tolist(),
                    finish_reason=self.finish_reasons[i],
                    latency_s=self.latencies[i] if self.latencies else 0.0,
                    top_logprobs=self.top_logprobs[i] if self.top_logprobs else None,
                    prompt_logprobs=scored[0] if scored else None,
                    prompt_top_logprobs=scored[1] if scored else None,
                )
            )
        return out


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

    features = ServingFeatures(token_prompts=True, logprobs=True, top_logprobs=20, prompt_logprobs=True)

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

    def render_prompt(self, prompt: Prompt) -> list[int]:
        """Chat template (with the generation prompt) + ``assistant_prefix``, tokenised once; a
        TokenPrompt's ids as they are."""
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)
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

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        return self.generate_batch(prompts, params).to_generations()

    def generate_streaming(self, prompt: Prompt, params: SamplingParams, on_text: OnText) -> Generation:
        """One completion, ``on_text`` called with the text so far at each token (see :mod:`.streaming`)."""
        streamer = TokenStreamer(self.tokenizer, on_text)
        return self.generate_batch([prompt], params, streamer=streamer).to_generations()[0]

    def generate_batch(
        self, prompts: list[Prompt], params: SamplingParams, *, streamer: Any = None
    ) -> GenerationBatch:
        """One completion per prompt, in order, as padded tensors (see :class:`GenerationBatch`);
        ``streamer`` (one prompt only) sees the tokens as they come."""
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
                micro = self._generate_micro_batch([rendered[i] for i in chunk], params, streamer=streamer)
                for i, row in zip(chunk, micro):
                    rows[i] = row
        return self._assemble(rendered, rows)

    def _generate_micro_batch(
        self, prompt_ids: list[list[int]], params: SamplingParams, *, streamer: Any = None
    ) -> list[dict[str, Any]]:
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
        recorder = LogprobRecorder(temperature, params.top_logprobs)
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
        if streamer is not None:
            if len(prompt_ids) != 1:
                raise ValueError(f"a streamer follows one prompt, got {len(prompt_ids)}")
            kwargs["streamer"] = streamer
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
        if params.prompt_logprobs and not shared:  # prompt scores come from a prefix this cache cannot take
            static, shared = None, True
            del kwargs["compile_config"]
        score = (temperature, params.top_logprobs) if params.prompt_logprobs else None
        prefill = self._shared_prefix_cache(input_ids, attention_mask, allowed=shared, score=score)
        prefix, owner = (prefill.cache, prefill.owner) if prefill else (None, None)
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
            if streamer is not None:
                streamer.restart()
            return self._generate_micro_batch(prompt_ids, params, streamer=streamer)
        latency = time.perf_counter() - began
        generated = sequences[:, width:]
        logprobs = recorder.finish(sequences[:, -1]) if generated.shape[1] else generated.float()
        # One device-to-host copy for the sampled ids, their log-probs and the top lists kept, if any.
        tokens, logprobs, *tops = to_host(generated, logprobs, *recorder.stacked_tops())
        recorder.tops = list(zip(*tops)) if tops else recorder.tops
        rows = [self._finish_row(row, logprobs[i], eos_ids, params, latency) for i, row in enumerate(tokens.tolist())]
        for i, row in enumerate(rows):
            if params.top_logprobs:
                row["top"] = recorder.top_lists(i, len(row["ids"]))
            if params.prompt_logprobs:  # a prompt of one token has no log-prob to give
                row["prompt"] = prefill.prompt[i] if prefill else ([None] * len(prompt_ids[i]), [[]] * len(prompt_ids[i]))
        return rows

    def _shared_prefix_cache(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, allowed: bool = True,
        score: tuple[float, int] | None = None,
    ) -> Prefill | None:
        """A KV cache of each distinct prompt but its last token, and ``owner``: row i's prompt.

        None when no two rows share a prompt (or sharing is off or not ``allowed``): ``generate``
        prefills as usual. Rows are left-padded to one width, so equal rows are equal prompts at
        equal positions. ``score`` (temperature, top k): prefill even distinct prompts, keeping the
        logits, and return each row's prompt log-probs (:func:`.logprobs.prompt_scores`).
        ``input_ids`` / ``attention_mask``: the host (CPU) tensors, compared there; the prefill runs
        on the model's device.
        """
        import torch
        from transformers import DynamicCache

        rows = [tuple(r) for r in input_ids.tolist()]
        device = self.device
        distinct: dict[tuple[int, ...], int] = {}
        if self.shared_prefill:
            owner = [distinct.setdefault(r, len(distinct)) for r in rows]
        else:
            owner = list(range(len(rows)))
            distinct = {(k,): k for k in owner}
        self.prefill_stats["rows"] += len(rows)
        sharing = self.shared_prefill and len(distinct) < len(rows)
        if not allowed or not (sharing or score) or input_ids.shape[1] < 2:
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
        if "logits_to_keep" in self._forward_parameters() and not score:
            kwargs["logits_to_keep"] = 1  # the prefill's logits are not needed: generate recomputes the last
        out = self.model(**kwargs)
        scored = None
        if score:
            per_prompt = prompt_scores(out.logits, input_ids[first], attention_mask[first], *score)
            scored = [per_prompt[k] for k in owner]
        return Prefill(cache, torch.tensor(owner, device=device), scored)

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
            top_logprobs=[r.get("top") for r in rows],
            prompt_logprobs=[r.get("prompt") for r in rows],
        )
