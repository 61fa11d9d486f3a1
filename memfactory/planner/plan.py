"""Memory planner: peak memory per device of a preset, estimated before any weights load.

``memfactory plan PRESET`` and the web UI call :func:`estimate_memory` / :func:`plan_markdown`.
The model's shape comes from its ``config.json`` (``tiny://`` shapes from
:data:`memfactory.backends.tiny.ARCHITECTURES`, the shipped GPU presets' hub ids from the same
shapes), never from loaded weights, so a plan of a 4B preset takes milliseconds on a laptop. The
bytes come from :mod:`.costs`; this module turns them into a verdict against a device, with advice.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memfactory.backends.shape import ModelShape, model_shape
from memfactory.config import load_preset
from memfactory.errors import MemFactoryError
from memfactory.planner.costs import (
    CUDA_CONTEXT_GIB,
    CUDA_FRAGMENTATION,
    GIB,
    HOST_FRAGMENTATION,
    Knobs,
    estimate,
    knobs,
    peak_gib,
)

COMPONENTS = ("weights", "gradients", "optimizer", "reference", "activations", "logits", "kv_cache", "vllm_engine",
              "runtime")
STRATEGIES = ("single", "ddp", "fsdp2")


@dataclass
class MemoryPlan:
    """Estimated peak memory per device of one preset (GiB); ``to_markdown`` is what the CLI prints."""

    components: dict[str, float]
    peak_gib: float
    device_gib: float | None
    fits: bool | None
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # update / rollout totals, GiB (no runtime)
    allocated_gib: float = 0.0  # what torch allocates at the peak (compare with max_memory_allocated)
    update_moment: str = ""  # forward | backward | optimizer step: where the update phase peaks
    budget_gib: float | None = None  # what one process may use: device_gib, or its share of host RAM
    device_label: str = ""
    preset_name: str = ""
    gpus: int = 1
    strategy: str = "single"
    parameters: int = 0
    trained_parameters: int = 0
    precision: str = ""

    def to_markdown(self) -> str:
        """A small table, the verdict and the advice."""
        where = "per process, host RAM" if self.device_label.startswith("host") else "per device"
        lines = [
            f"### Memory plan: `{self.preset_name}` ({self.gpus} × {self.strategy}, {self.precision})",
            "",
            f"{self.parameters / 1e9:.3g}B parameters, {self.trained_parameters / 1e6:,.1f}M trained. GiB {where}:",
            "",
            "| component | GiB |",
            "|---|---|",
            *(f"| {name} | {self.components.get(name, 0.0):.2f} |" for name in COMPONENTS
              if name != "vllm_engine" or self.components.get(name)),
            f"| update phase (allocated) | {self.phases.get('update', 0.0):.2f} |",
            f"| rollout phase (allocated) | {self.phases.get('rollout', 0.0):.2f} |",
            f"| **peak** | **{self.peak_gib:.2f}** |",
            "",
        ]
        if self.fits is None:
            lines.append("Verdict: no device memory known; pass --gpu-mem.")
        else:
            budget = self.budget_gib if self.budget_gib is not None else self.device_gib
            share = f"{budget:.1f} GiB per process" if budget != self.device_gib else f"{budget:.1f} GiB"
            if self.fits:
                lines.append(f"Verdict: **fits** {self.device_label} ({share}; "
                             f"{budget - self.peak_gib:.1f} GiB to spare).")
            else:
                lines.append(f"Verdict: **does not fit** {self.device_label} ({share}; "
                             f"{self.peak_gib - budget:.1f} GiB short).")
        if self.advice:
            lines += ["", "What would make it fit:", *(f"- {item}" for item in self.advice)]
        if self.notes:
            lines += ["", "Notes:", *(f"- {item}" for item in self.notes)]
        return "\n".join(lines) + "\n"


def _device_memory(gpus: int, gpu_mem_gib: float | None) -> tuple[str, float | None, str]:
    """(device kind, GiB, label): the card's total memory, or host RAM without CUDA."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except (ImportError, RuntimeError):  # a broken CUDA install plans as host
        cuda = False
    if cuda:
        count = torch.cuda.device_count()
        if gpus > count and gpu_mem_gib is None:
            raise MemFactoryError(
                f"--gpus {gpus}: this machine has {count} CUDA device(s); plan for at most {count}, or pass "
                "--gpu-mem to plan for another machine's cards"
            )
        if gpu_mem_gib is not None:
            return "cuda", gpu_mem_gib, f"a {gpu_mem_gib:g} GiB device"
        total = torch.cuda.mem_get_info()[1] / GIB
        return "cuda", total, f"{torch.cuda.get_device_name()}"
    if gpu_mem_gib is not None:
        return "cuda", gpu_mem_gib, f"a {gpu_mem_gib:g} GiB device"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return "cpu", ram, "host RAM (no CUDA here)"


def _resolve_strategy(gpus: int, strategy: str | None) -> str:
    if strategy is None:
        return "single" if gpus == 1 else "ddp"
    name = {"fsdp": "fsdp2"}.get(strategy.lower(), strategy.lower())
    if name not in STRATEGIES:
        raise MemFactoryError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return "single" if gpus == 1 else name


def estimate_memory(
    preset: Any, *, gpus: int = 1, gpu_mem_gib: float | None = None, strategy: str | None = None,
    call_shape: tuple[int, int] | None = None, padded: bool = True,
) -> MemoryPlan:
    """Peak memory per device of ``preset`` trained on ``gpus`` processes (``strategy``: single,
    ddp or fsdp2; default ddp for several), against ``gpu_mem_gib`` or the detected device.
    ``call_shape`` (prompt, response tokens) replaces the preset's longest call (bench/gpu_check.py
    estimates the exact rows it measures); ``padded=False`` says the update's rows are all of one
    length, so attention runs without a padding mask (real rollouts are ragged: the default).

    Raises MemFactoryError for impossible requests (0 GPUs, negative memory, more GPUs than exist
    when no --gpu-mem says the plan is for another machine, a model whose shape cannot be read).
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise MemFactoryError(f"--gpus {gpus}: the number of processes must be a whole number of at least 1")
    if gpu_mem_gib is not None and not (isinstance(gpu_mem_gib, (int, float)) and math.isfinite(gpu_mem_gib)
                                        and gpu_mem_gib > 0):
        raise MemFactoryError(f"--gpu-mem {gpu_mem_gib}: device memory must be a positive number of GiB, e.g. 80")
    device, device_gib, label = _device_memory(gpus, gpu_mem_gib)
    strat = _resolve_strategy(gpus, strategy)
    if preset.model.backend not in ("hf", "vllm"):
        raise MemFactoryError(
            f"model.backend {preset.model.backend!r}: the model runs elsewhere (a server), so this machine holds "
            "no weights to plan; plan a preset with backend: hf"
        )
    shape = model_shape(preset.model.path, preset.model.seed)
    k = knobs(preset, gpus, strat, device, shape)
    if call_shape is not None:
        k = replace(k, prompt=int(call_shape[0]), response=int(call_shape[1]))
    k = replace(k, padded=padded)
    engine_note = None
    if k.engine == "vllm":
        from memfactory.backends.vllm_engine import VLLMOptions, engine_memory

        options = VLLMOptions.model_validate(preset.trainer.rollout.options)
        held, during_update, engine_note = engine_memory(
            options, cuda=device == "cuda", device_bytes=device_gib * GIB if device_gib else None,
            weight_bytes=shape.parameters * k.engine_bytes)
        k = replace(k, engine_rollout=held, engine_update=during_update)
    components, info = estimate(shape, k)
    peak = peak_gib(info, components)
    budget = device_gib
    host_note = []
    if device == "cpu" and gpus > 1:  # every process lives in the same RAM
        budget = device_gib / gpus if device_gib else None
        host_note.append(f"{gpus} processes share host RAM: each may use {budget:.1f} GiB")
    fits = None if budget is None else peak <= budget
    notes = [
        (f"update peak at the {info['moment']} of a micro-batch of {k.micro_batch} × "
         f"({k.prompt} prompt + {k.response} response) tokens; rollout: {k.rollout_rows} sequences at once"),
        *host_note,
    ]
    if info["cast_cache"] and info["moment"] == "forward":
        notes.append(f"logits include {info['cast_cache'] / GIB:.2f} GiB of bf16 autocast weight copies (bf16_mixed)")
    if info["step_temp"] and info["moment"] == "optimizer step":
        notes.append(f"the peak is AdamW's step: {info['step_temp'] / GIB:.2f} GiB of foreach temporaries")
    if device == "cpu":
        notes.append("no CUDA here: the device is host RAM; runtime = the Python/torch process's baseline RSS plus "
                     f"{HOST_FRAGMENTATION:.0%} for glibc keeping freed blocks (peak RSS, not live tensors)")
        if shape.layers >= 8 and os.environ.get("MEMFACTORY_MALLOC_MMAP_THRESHOLD", "1") == "0":
            notes.append("MEMFACTORY_MALLOC_MMAP_THRESHOLD=0 keeps glibc's dynamic mmap threshold, which can leave a "
                         "many-layer model's peak RSS 2-4x above this (freed per-layer temporaries stay in the heap)")
    else:
        notes.append(f"runtime = CUDA context ({CUDA_CONTEXT_GIB} GiB) + {CUDA_FRAGMENTATION:.0%} allocator "
                     "fragmentation (reserved over allocated)")
    if engine_note:
        notes.append(engine_note)
    if k.strategy == "fsdp2":
        notes.append("FSDP2: weights, gradients and optimizer state sharded; the reference copy is not")
    plan = MemoryPlan(
        components={name: round(value, 3) for name, value in components.items()},
        peak_gib=round(peak, 2), device_gib=None if device_gib is None else round(device_gib, 2), fits=fits,
        notes=notes, phases={"update": round(info["update"] / GIB, 2), "rollout": round(info["rollout"] / GIB, 2)},
        allocated_gib=round(info["allocated"] / GIB, 2), update_moment=info["moment"], device_label=label,
        budget_gib=None if budget is None else round(budget, 2), preset_name=preset.name,
        gpus=gpus, strategy=strat, parameters=shape.parameters, trained_parameters=int(info["trained"]),
        precision=k.precision,
    )
    if fits is False:
        plan.advice = _advice(shape, k, budget)
    return plan


def _advice(shape: ModelShape, k: Knobs, budget: float) -> list[str]:
    """Each knob that, turned on its own, brings the peak under ``budget``; else the best ones."""
    tried: list[tuple[str, Knobs]] = []
    for micro in (k.micro_batch // 2, k.micro_batch // 4, 1):
        if 1 <= micro < k.micro_batch:
            tried.append((f"trainer.micro_batch_size={micro}", replace(k, micro_batch=micro)))
    if not k.checkpointing:
        tried.append(("trainer.gradient_checkpointing=true", replace(k, checkpointing=True)))
    if k.lora_r is None:
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
        tried.append(("trainer.lora={r: 16} (LoRA; the reference becomes the adapter-disabled policy)",
                      replace(k, lora_r=16, lora_targets=targets, reference=False)))
    if k.precision == "bf16_mixed":
        tried.append(("trainer.precision=bf16_pure (AdamW on bf16 weights: small updates round away)",
                      replace(k, precision="bf16_pure")))
    if k.device == "cuda":
        for n in (2, 4, 8):
            if n > k.gpus:
                tried.append((f"{n} GPUs with FSDP2 (accelerate launch --config_file presets/accelerate/fsdp.yaml)",
                              replace(k, gpus=n, strategy="fsdp2",
                                      rollout_rows=math.ceil(k.batch_size / n) * k.group_size)))
    tried.append(((f"shorter caps: response {k.response // 2}, prompt {k.prompt // 2} tokens "
                   "(chunk/memory/answer tokens, trainer.max_new_tokens)"),
                  replace(k, prompt=max(k.prompt // 2, 1), response=max(k.response // 2, 1))))
    results = []
    for label, variant in tried:
        components, info = estimate(shape, variant)
        results.append((label, peak_gib(info, components)))
    fitting = [(label, peak) for label, peak in results if peak <= budget]
    # One FSDP2 suggestion is enough: the smallest number of GPUs that fits.
    seen_fsdp = False
    advice = []
    for label, peak in fitting:
        if "FSDP2" in label:
            if seen_fsdp:
                continue
            seen_fsdp = True
        advice.append(f"{label}: peak {peak:.1f} GiB")
    if not advice:
        best = sorted(results, key=lambda item: item[1])[:3]
        advice = ["no single knob is enough; the largest savings (combine them):",
                  *(f"{label}: peak {peak:.1f} GiB" for label, peak in best)]
    return advice


def plan_markdown(
    preset_path_or_yaml_text: str, gpus: int = 1, gpu_mem_gib: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> str:
    """The plan as markdown for the web UI; a user mistake comes back as markdown, never raised."""
    text = preset_path_or_yaml_text or ""
    try:
        if "\n" not in text.strip() and Path(text.strip()).expanduser().suffix in (".yaml", ".yml"):
            preset = load_preset(Path(text.strip()).expanduser(), list(overrides))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "preset.yaml"
                path.write_text(text, encoding="utf-8")
                preset = load_preset(path, list(overrides))
        return estimate_memory(preset, gpus=gpus, gpu_mem_gib=gpu_mem_gib).to_markdown()
    except MemFactoryError as exc:
        return f"**Cannot plan this preset:**\n\n```\n{exc}\n```\n"
