"""A decoder-only model's shape from its config.json, and the longest call a preset makes, without weights.

The memory planner (:mod:`memfactory.planner`), the start-up checks (:mod:`memfactory.preflight`:
a vLLM engine's context length and KV pool) and ``bench/gpu_check.py`` all size things from these
numbers. ``tiny://`` shapes come from :data:`memfactory.backends.tiny.ARCHITECTURES`, the shipped
GPU presets' hub ids from the same shapes, so nothing here needs the hub or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memfactory.backends.sources import SMOLLM2, hub_offline, resolve_model_path
from memfactory.backends.tiny import ARCHITECTURES, SAVED_DTYPE, SCHEME, VOCAB_SIZE, parse_tiny_path
from memfactory.errors import MemFactoryError

# Prompt tokens around a chunk and a memory (instructions, question, chat template).
TEMPLATE_TOKENS = 256
# A memory-bank agent's longest prompt (a conversation slice or retrieved memories + instructions).
BANK_PROMPT_TOKENS = 2048
# Hub ids of the shipped GPU presets -> the tiny:// shape of the same architecture, so that a plan
# works offline (tests/planner/test_planner_costs.py checks these shapes against the real configs' numbers).
KNOWN_HUB_SHAPES = {
    "qwen/qwen3-1.7b": "qwen3-1.7b-shape",
    "qwen/qwen3-4b-instruct-2507": "qwen3-4b-shape",
    "qwen/qwen3-4b": "qwen3-4b-shape",
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of a decoder-only transformer's config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qk_norm: bool = False  # Qwen3's per-head RMSNorm on q and k
    attention_bias: bool = False
    dtype: str = "float32"  # the checkpoint's own dtype (what model.dtype: auto loads)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers config (``AutoConfig``) or a plain dict of the same keys."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
        dtype = get("dtype") or get("torch_dtype") or "float32"
        dtype = str(dtype).removeprefix("torch.")
        return cls(
            hidden=hidden,
            intermediate=int(get("intermediate_size")),
            layers=int(get("num_hidden_layers")),
            heads=heads,
            kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            vocab=int(get("vocab_size")),
            tied=bool(get("tie_word_embeddings", False)),
            qk_norm=str(get("model_type", "")).startswith("qwen3"),
            attention_bias=bool(get("attention_bias", False)),
            dtype=dtype if dtype in DTYPE_BYTES else "float32",
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer, by its transformers module name."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def parameters(self) -> int:
        """Every parameter: embeddings (the LM head too unless tied), attention with GQA, MLP, norms."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden
        if self.attention_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden

    @property
    def linear_parameters(self) -> int:
        """Parameters held by ``nn.Linear`` modules: the projections (with biases) and an untied LM head.
        The rest (embeddings, norms) is what a ``bf16_mixed`` reference keeps in fp32."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values())
        if self.attention_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        return self.layers * per_layer + (0 if self.tied else self.vocab * self.hidden)

    def lora_parameters(self, r: int, targets: list[str]) -> int:
        """Adapter parameters: r x (in + out) for every targeted projection of every layer."""
        shapes = self.linear_shapes()
        return self.layers * sum(r * (a + b) for name, (a, b) in shapes.items() if name in targets)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token over all layers."""
        return 2 * self.layers * self.kv_dim * dtype_bytes


def model_shape(path: str, seed: int = 0) -> ModelShape:
    """The shape of ``model.path`` from its config.json, without loading (or building) weights."""
    if path.startswith(SCHEME):
        name = parse_tiny_path(path)
        arch = {"vocab_size": VOCAB_SIZE, "model_type": "qwen3", "dtype": SAVED_DTYPE.get(name, "float32"),
                **ARCHITECTURES[name]}
        return ModelShape.from_config(arch)
    if path.lower() in KNOWN_HUB_SHAPES and not Path(path).expanduser().is_dir():
        try:
            return _auto_config_shape(path, local_only=True)
        except (OSError, ValueError, KeyError):  # not in the local hub cache: the same architecture's shipped shape
            return replace(model_shape(SCHEME + KNOWN_HUB_SHAPES[path.lower()]), dtype="bfloat16")
    if path.lower() == SMOLLM2:
        return _auto_config_shape(resolve_model_path(path), local_only=True)
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MemFactoryError(f"model.path {path!r} is a folder but holds no config.json, so its shape is unknown")
        return _auto_config_shape(str(local), local_only=True)
    try:
        return _auto_config_shape(path, local_only=hub_offline())
    except (OSError, ValueError, KeyError) as exc:
        raise MemFactoryError(
            f"model.path {path!r}: cannot read its config.json ({str(exc).splitlines()[0][:200]}); the planner "
            "needs the model's shape: give a local folder written by save_pretrained, a tiny:// model, "
            "or run once with the hub reachable"
        ) from None


def _auto_config_shape(path: str, *, local_only: bool) -> ModelShape:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=local_only)
    text = getattr(config, "text_config", None)  # multimodal wrappers keep the decoder's numbers here
    return ModelShape.from_config(text if text is not None and not hasattr(config, "num_hidden_layers") else config)


def preset_shape(preset: Any) -> tuple[int, int, int]:
    """(prompt tokens, response tokens, calls per trajectory) of the preset's longest model call.

    MemAgent: a chunk plus the memory plus the template, answering up to the larger of the memory
    and answer caps. Memory-bank agents: a bank-sized prompt and the largest generation cap.
    ``direct``: its context window plus the template. bench/gpu_check.py measures at this shape.
    """
    memory = preset.modules.get("memory")
    if memory is not None and memory.type == "recurrent":
        opts = preset.component_options(memory, "module")
        response = max(opts.memory_tokens, opts.answer_tokens)
        return opts.chunk_tokens + opts.memory_tokens + TEMPLATE_TOKENS, response, (opts.max_chunks or 6) + 1
    caps = [preset.trainer.max_new_tokens]
    for spec in preset.modules.values():
        caps.append(int(spec.options.get("max_tokens", 0)))
    if preset.agent == "direct":
        context = int(preset.agent_options.get("max_context_tokens", 4096))
        return context + TEMPLATE_TOKENS, preset.trainer.max_new_tokens, 1
    return BANK_PROMPT_TOKENS, max(caps), max(len(preset.modules), 1)
