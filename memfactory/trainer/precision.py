"""Training precision: which dtype the weights the optimizer steps are kept in, and what computes.

AdamW on bfloat16 weights loses most small updates: bf16 has 8 bits of mantissa, so a weight of
magnitude 0.02 cannot move by less than ~1e-4, and at lr 5e-6 most steps round away. verl (and
so MemAgent) therefore keep fp32 *master* weights and optimizer state and compute the forward
and backward passes in bf16. The choices (``trainer.precision``):

* ``fp32``: weights, optimizer state and compute in float32 (the CPU default).
* ``bf16_mixed``: the weights that train (all of them, or the LoRA adapters) are float32, the
  optimizer state follows them, and forward passes (training, scoring, generation) run under
  ``torch.autocast(dtype=bfloat16)``; gradients land in fp32 on the fp32 weights. Frozen weights
  (the base model under LoRA, the reference model's Linear weights) stay in ``model.dtype`` to save
  memory; the reference's embeddings and norms are fp32 like the policy's, so it computes exactly as
  the policy does before any update (:func:`reference_dtypes`).
  The autocast is ours, not accelerate's ``mixed_precision`` (whose process-wide state cannot
  change between runs in one process, and whose forward patch misses ``generate`` through peft);
  an accelerate config that asks for mixed precision itself is refused, so one field decides.
* ``bf16_pure``: everything in bfloat16, AdamW stepping bf16 weights: half the memory of the
  weights and optimizer state, at the price of lost updates. Allowed, with a warning.
* ``auto`` (default): ``bf16_mixed`` when the weights are bfloat16 (``model.dtype: bfloat16``,
  or ``auto`` and the checkpoint is bf16), else ``fp32``.

float16 training needs loss scaling, which this trainer does not do; it is refused with a message
that says what to set instead, except under an explicit ``bf16_mixed``, which converts a float16
checkpoint to bfloat16 as it loads (:func:`convert_float16`): that run computes in bf16 anyway, so
every Linear weight the forward sees is the same value autocast would have made of the fp16 one;
the conversion keeps embeddings, norms and the residual stream of frozen weights (a LoRA base)
out of float16, whose small gradients underflow without loss scaling, and makes the run exactly a
bf16 checkpoint's (reference, checkpoint dtype, memory plan). It rounds the fp16 values to bf16's
8-bit mantissa (relative change up to 2^-9); fp16's range fits inside bf16's, so nothing overflows. So is bf16 on a GPU that lacks it, and QLoRA (``lora.quantize``)
without bitsandbytes and CUDA (:func:`require_qlora` names which one is missing).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from memfactory.errors import MemFactoryError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16_mixed", "bf16_pure"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16_mixed", "bf16_pure")

# The dtype the model is loaded with, per resolved precision (None: as model.dtype says).
_LOAD_DTYPE = {"fp32": "float32", "bf16_pure": "bfloat16", "bf16_mixed": None}


@dataclass(frozen=True)
class PrecisionPlan:
    """A resolved ``trainer.precision``: how to load, what the optimizer steps, what autocasts."""

    name: str  # fp32 | bf16_mixed | bf16_pure
    requested: str  # what the preset said (auto or one of the above)

    def autocast(self, device: torch.device) -> Any:
        """The context every forward pass runs in: bf16 autocast under ``bf16_mixed``, else a no-op."""
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.name == "bf16_mixed")

    @property
    def master_dtype(self) -> torch.dtype:
        """The dtype of the trainable weights (and so of the AdamW state)."""
        return torch.bfloat16 if self.name == "bf16_pure" else torch.float32

    @property
    def uses_bf16(self) -> bool:
        return self.name != "fp32"


def load_dtype(precision: str, model_dtype: str) -> str:
    """The ``model.dtype`` to load with for ``precision`` (auto/bf16_mixed keep the preset's)."""
    return _LOAD_DTYPE.get(precision) or model_dtype


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype most of the model's floating-point weights have (what ``dtype: auto`` gave)."""
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def resolve_precision(requested: str, loaded: torch.dtype) -> PrecisionPlan:
    """The precision to train with, given the dtype the weights were loaded in.

    Raises ``MemFactoryError`` for float16 weights (no loss scaling here) and unknown names.
    """
    if requested not in PRECISIONS:
        raise MemFactoryError(f"trainer.precision: unknown value {requested!r}; use one of {', '.join(PRECISIONS)}")
    if loaded == torch.float16 and requested in ("auto", "bf16_pure"):
        raise MemFactoryError(
            "model.dtype: float16 weights cannot be trained here (float16 needs loss scaling, which this "
            "trainer does not do); set model.dtype: bfloat16 (trained as trainer.precision: bf16_mixed), "
            "trainer.precision: bf16_mixed (converts the float16 weights to bfloat16 as they load) "
            "or model.dtype: float32"
        )
    if requested == "auto":
        return PrecisionPlan("bf16_mixed" if loaded == torch.bfloat16 else "fp32", requested)
    return PrecisionPlan(requested, requested)


def require_hardware(plan: PrecisionPlan, device: torch.device, accelerate_mixed_precision: str = "no") -> None:
    """Stop at start-up, before any rollout, when the device cannot compute in bf16 or the
    accelerate launch config asks for a mixed precision of its own."""
    if accelerate_mixed_precision not in ("no", None):
        raise MemFactoryError(
            f"the accelerate config sets mixed_precision: {accelerate_mixed_precision}; set it to 'no' there "
            f"and choose the precision with trainer.precision (now {plan.requested!r} -> {plan.name}), "
            "which keeps fp32 master weights under bf16_mixed"
        )
    if plan.uses_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise MemFactoryError(
            f"trainer.precision: {plan.name} needs bfloat16, which this GPU ({name}) does not support; "
            "set trainer.precision: fp32 and model.dtype: float32 (or use an Ampere or newer GPU)"
        )


def convert_float16(model: torch.nn.Module, plan: PrecisionPlan) -> int:
    """Under ``bf16_mixed``, turn every float16 parameter and buffer of a freshly loaded model into
    bfloat16 (the rule in the module docstring); returns how many tensors changed. Other plans never
    see float16 weights (:func:`resolve_precision` refuses them)."""
    if plan.name != "bf16_mixed":
        return 0
    converted = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype == torch.float16:
                tensor.data = tensor.data.to(torch.bfloat16)
                converted += 1
    if converted:
        log.info("trainer.precision bf16_mixed: the float16 checkpoint's %d tensors converted to bfloat16, "
                 "the dtype this run computes in", converted)
    return converted


def apply_master_dtype(model: torch.nn.Module, plan: PrecisionPlan) -> torch.nn.Module:
    """Cast the trainable weights to the plan's master dtype; frozen weights keep theirs.

    Under ``bf16_mixed`` a bf16 checkpoint is upcast exactly (every bf16 value is an fp32 value),
    so the first forward under autocast matches the bf16 model's.
    """
    master = plan.master_dtype
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.is_floating_point() and param.dtype != master:
                param.data = param.data.to(master)
    return model


def reference_dtypes(reference: torch.nn.Module, plan: PrecisionPlan) -> torch.nn.Module:
    """Give a full fine-tuning reference copy the dtypes with which it computes exactly as the policy
    does before any update, so that KL is 0 until the policy moves (as verl's and TRL's references).

    Under ``bf16_mixed`` the policy's fp32 master weights run under bf16 autocast: ``nn.Linear``
    casts its fp32 weight to the same bf16 values the checkpoint holds, but embeddings, norms and
    the residual stream are not autocast, so they compute in fp32. A bf16 reference would compute
    those in bf16 (max |Δ log-prob| 0.28 on the tiny model, KL ~1e-3 before the first update). So
    every parameter outside an ``nn.Linear`` takes the master dtype; Linear weights keep the loaded
    dtype (autocast casts the policy's to exactly those). Cost: the embedding in fp32 (+2 bytes per
    embedding parameter; +0.6 GB on Qwen3-1.7B). Other precisions already compute alike.
    """
    if plan.name != "bf16_mixed":
        return reference
    master = plan.master_dtype
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                continue
            for param in module.parameters(recurse=False):
                if param.is_floating_point() and param.dtype != master:
                    param.data = param.data.to(master)
    return reference


def warn_if_pure(plan: PrecisionPlan, lr: float) -> None:
    if plan.name == "bf16_pure":
        log.warning(
            "trainer.precision bf16_pure: AdamW steps bfloat16 weights, so updates smaller than ~1/256 "
            "of a weight round away (at lr %g most do); use trainer.precision: bf16_mixed to keep fp32 "
            "master weights",
            lr,
        )


def describe(plan: PrecisionPlan, model: torch.nn.Module) -> dict[str, Any]:
    """What the run records about its precision (runs database meta, logs)."""
    trainable = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
    frozen = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad}
    return {
        "precision": plan.name,
        "trainable_dtype": ",".join(sorted(trainable)) or "none",
        "frozen_dtype": ",".join(sorted(frozen)) or "none",
        "autocast": "bfloat16" if plan.name == "bf16_mixed" else "none",
    }


def require_qlora() -> None:
    """QLoRA needs bitsandbytes and a CUDA device; raise a MemFactoryError naming what is missing."""
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (bitsandbytes 4-bit kernels do not run on this CPU-only torch)")
    if missing:
        raise MemFactoryError(
            "QLoRA (4-bit base model + LoRA) needs "
            + " and ".join(missing)
            + "; use plain LoRA (trainer.lora) on this machine"
        )
