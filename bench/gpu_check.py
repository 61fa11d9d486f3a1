"""The one prepared script that proves the GPU path, for the day a GPU is lent.

Sections (each runs on its own; a failure is recorded with its error and the rest go on):

1. ``cuda_tests``: the CUDA-marked tests (``pytest -m cuda``): ``GRPOTrainer.train_step()`` end to
   end with beta > 0 and num_iterations 2 (full, LoRA, bf16_mixed + checkpointing, a separate
   ``hf`` engine), every tensor checked to reach each model on that model's device.
   ``learns`` (``bench/learn_check.py``): 30 GRPO steps of the tiny model under ``bf16_mixed`` with
   gradient checkpointing on the vowel-share reward; fails unless the reward rises.
2. ``preset:<name>`` for every shipped GPU preset (``GPU_PRESETS``), on a random model of the
   preset's real shape (``tiny://qwen3-1.7b-shape`` / ``tiny://qwen3-4b-shape``: real layer and
   vocabulary sizes, built locally, no download) with the preset's own precision, gradient
   checkpointing, LoRA, KL and micro-batch settings:

   * ``update``: 2 optimizer steps over model calls of the preset's longest real shape (prompt
     = chunk + memory + template, response = the generation cap; ``2 x micro_batch_size`` rows):
     seconds per step, peak GPU memory allocated and reserved, and the measured bytes of
     weights, gradients and optimizer state — what decides whether the preset fits a card;
   * ``steps``: 2 whole GRPO steps (rollouts, old/ref log-probs, update) through the agent, with
     the generation caps cut (``--full`` keeps the preset's) so the section stays short.
   The presets decode eagerly here (``model.options.decode: eager``): compiling the decode step
   of each preset's shape would cost minutes of this script's time and hide in the step times.
   Each update also reports its MFU by 6N and by executed FLOPs (memfactory/planner/flops.py).
   ``planner_out_of_sample`` (``bench/planner_check.py``): planned vs measured GiB for shapes the
   planner was not fitted on (LoRA, no checkpointing, ragged rows, beta 0, the rollout at the real
   prompt length, 2 DDP / FSDP2 processes on the one GPU), with MFU for ragged rows and beta 0.
3. generation tokens/s with the ``hf`` backend (sdpa, and FlashAttention-2 if it imports; eager
   decoding, as the first run's 195 tokens/s) and with the in-process vLLM engine if vllm
   imports; LoRA GRPO steps with rollouts on vLLM.
4. ``decode_speed`` (``bench/decode_speed.py``): decode tokens/s at batch 16 and 64 for eager,
   static-cache + compiled (inductor, CUDA graphs) and vLLM decoding of the 1.7B shape, each next
   to the memory roofline (weight bytes / measured copy bandwidth per step) as a share.

Results go to ``--out`` (default ``$OUT`` or ``bench/``) as ``gpu_check.json`` and
``gpu_check.md``, ready to paste into bench/RESULTS.md.

    python bench/gpu_check.py                        # on the GPU machine (about 6-8 minutes on an H200,
                                                     # before planner_out_of_sample: a few minutes more)
    python bench/gpu_check.py --sections planner_out_of_sample   # the planner's out-of-sample check alone
    python bench/gpu_check.py --sections cuda_tests,preset:memagent_qwen3_1.7b
    python bench/gpu_check.py --shape qwen3-mini     # a dry run of the same code on CPU (tiny shapes)

On the lent machine (Python 3.12, torch/transformers/accelerate/peft/pytest installed, no
network), the packages it lacks travel as wheels: run ``bash bench/gpu_wheels.sh`` here first,
then ``device.run`` with ``carry: [".whl"]`` and the command that script prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Every preset meant for a GPU, with the random model of its real shape.
GPU_PRESETS = {
    "memagent_qwen3_1.7b": "qwen3-1.7b-shape",
    "memagent_qwen3_4b": "qwen3-4b-shape",
    "memory_r1_qwen3": "qwen3-4b-shape",
    "rmm_qwen3": "qwen3-4b-shape",
}
# The longest call's shape is the memory planner's (memfactory/planner/), so the estimate printed
# next to each measured peak is for exactly the rows measured.
from memfactory.backends.shape import BANK_PROMPT_TOKENS, TEMPLATE_TOKENS, preset_shape  # noqa: F401


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _peak() -> dict:
    import torch

    if not _cuda():
        return {"peak_gib": None, "reserved_gib": None}
    return {"peak_gib": _gib(torch.cuda.max_memory_allocated()), "reserved_gib": _gib(torch.cuda.max_memory_reserved())}


def _free() -> None:
    """Collect what the caller has just dropped (``del``) and return the GPU's cached blocks."""
    import gc

    import torch

    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()


def _prompts(n: int, words: int):
    from memfactory.types import ChatPrompt

    return [ChatPrompt([{"role": "user", "content": " ".join(["memory"] * words) + f" question {i}"}]) for i in range(n)]


# --------------------------------------------------------------------------- 1. CUDA tests


def cuda_tests() -> dict:
    """``pytest -m cuda`` in a child process; passes/failures and the tail of its output."""
    if not _cuda():
        return {"skipped": "no CUDA"}
    started = time.perf_counter()
    # The train_step tests now decode compiled (model.options.decode auto = compiled on CUDA): the
    # tiny model's decode step compiles in each, hence the longer limit.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/trainer",
         "tests/backends/test_static_decode.py", "tests/backends/test_hf_backend.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=420, check=False,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    summary = next((line for line in reversed(tail.splitlines()) if " passed" in line or " failed" in line), "")
    out = {"seconds": round(time.perf_counter() - started, 1), "returncode": done.returncode, "summary": summary}
    if done.returncode != 0:
        out["error"] = f"pytest -m cuda exited {done.returncode}: {summary}"
        out["trace"] = tail
    return out


# --------------------------------------------------------------------------- 2. presets at real shape


def synthetic_calls(rows: int, prompt: int, response: int, vocab: int, seed: int = 0, group: int = 1):
    """Model calls of exactly the given shape, random token ids (what the update costs is the shape).

    ``group``: consecutive rows share one prompt, as a GRPO group's do (the update may then run it
    once per micro-batch, see trainer.shared_prompt_forward).
    """
    import random

    from memfactory.types import ModelCall

    rng = random.Random(seed)
    calls = []
    for i in range(rows):
        if i % group == 0:
            prompt_ids = [rng.randrange(3, vocab) for _ in range(prompt)]
        calls.append(ModelCall(module="shape", prompt_ids=list(prompt_ids),
                               response_ids=[rng.randrange(3, vocab) for _ in range(response)],
                               logprobs=[-1.0] * response, text=""))
    return calls


def _bytes(tensors) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def watch_gradients(trainer) -> dict:
    """The largest bytes of gradients seen at an optimizer step (the update frees them right after it),
    through a step pre-hook on the torch optimizer; ``["bytes"]`` fills in as the update runs."""
    seen = {"bytes": 0}
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)

    def before_step(opt, _args, _kwargs) -> None:
        held = _bytes(p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None)
        seen["bytes"] = max(seen["bytes"], held)

    seen["handle"] = optimizer.register_step_pre_hook(before_step)
    return seen


def state_gib(trainer, gradients: dict) -> dict:
    """Measured bytes of the weights (policy + reference), gradients (at the step, ``watch_gradients``)
    and optimizer state."""
    policy = list(trainer.policy.parameters())
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "weights_gib": _gib(_bytes(policy)),
        "reference_gib": _gib(_bytes(trainer.reference.parameters())) if trainer.reference is not None else 0.0,
        "grads_gib": _gib(gradients["bytes"]),
        "optimizer_gib": _gib(_bytes(v for state in optimizer.state.values() for v in state.values())),
    }


def planner_estimate(preset, prompt: int, response: int, measured: dict) -> dict:
    """The memory planner's update-phase estimate (allocated GiB) for the rows just measured, per
    section of memory, and its error against the measured peak: the first GPU run calibrates it."""
    from memfactory.planner.plan import estimate_memory

    plan = estimate_memory(preset, call_shape=(prompt, response), padded=False)  # synthetic rows: one length
    c = plan.components
    out = {"estimate_gib": plan.phases["update"],
           "estimate_parts_gib": {"weights": c["weights"], "reference": c["reference"], "grads": c["gradients"],
                                  "optimizer": c["optimizer"], "activations": c["activations"], "logits": c["logits"]},
           "estimate_moment": plan.update_moment,
           "estimate_error_pct": None}
    if measured.get("peak_gib"):
        out["estimate_error_pct"] = round(100 * (plan.phases["update"] - measured["peak_gib"]) / measured["peak_gib"], 1)
    return out


class _Length:
    """A reward with variance in every group (random models write random text), so every step updates."""

    name = "length"

    def score(self, trajectories):
        return [len(t.answer) / 100.0 for t in trajectories]


def _data_overrides(preset_name: str, dry: bool) -> list[str]:
    """Local synthetic data of the preset's kind: the lent machine has no datasets and no network."""
    if preset_name.startswith("memagent"):
        return [f"env.data=synthetic://hotpotqa?n=8&docs={20 if dry else 120}&seed=0"]
    bank = ["env.data=synthetic://locomo?n=4&seed=0&sessions=2", "agent_options.embedder=hashing"]
    if preset_name.startswith("rmm"):
        # A random model extracts nothing parseable, so banks built by reflection stay empty and the
        # reranker (the trained module) would never be called; the data's observations fill them.
        bank.append("agent_options.memory_source=observations")
    return bank


def _step_caps(preset, dry: bool, full: bool) -> list[str]:
    """Generation caps for the whole-step section (none with --full)."""
    if full:
        return []
    cap = 8 if dry else 128
    memory = preset.modules.get("memory")
    caps = [f"trainer.max_new_tokens={cap}"]
    if memory is not None and memory.type == "recurrent":
        caps += ["modules.memory.max_chunks=2", f"modules.memory.memory_tokens={cap}",
                 f"modules.memory.answer_tokens={cap}"]
        if dry:
            caps += ["modules.memory.chunk_tokens=64"]
    else:
        caps += [f"modules.{slot}.max_tokens={cap}" for slot, spec in preset.modules.items() if "max_tokens" in spec.options]
    return caps


def preset_check(name: str, shape: str, *, full: bool = False) -> dict:
    import torch

    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    dry = shape == "qwen3-mini"
    path = presets_dir() / f"{name}.yaml"
    # 2 steps: the presets' warm-up (10 steps) would outlast them, which validation refuses; eager decoding keeps
    # the sections comparable with the first GPU run (bench/RESULTS.md) and skips minutes of compiling
    common = [f"model.path=tiny://{shape}", "model.options={decode: eager}", "trainer.batch_size=1",
              "trainer.grad_accum=1", "trainer.steps=2", "trainer.warmup_steps=0", "trainer.skip_equal_groups=false",
              "trainer.stop=[]", *_data_overrides(name, dry)]
    real = load_preset(path, common)
    prompt, response, calls_per_trajectory = preset_shape(real)
    if dry:  # the same code on CPU in seconds
        prompt, response = 96, 16
    capped = load_preset(path, [*common, *_step_caps(real, dry, full)])
    trainer = GRPOTrainer(capped)
    trainer.env.rewards, trainer.env.weights = {"length": _Length()}, {"length": 1.0}
    cfg = trainer.cfg
    out: dict = {
        "shape": shape, **trainer.precision_info, "lora": cfg.lora is not None, "beta": cfg.beta,
        "micro_batch_size": cfg.micro_batch_size, "row_tokens": prompt + response, "prompt_tokens": prompt,
        "response_tokens": response, "calls_per_trajectory_real": calls_per_trajectory,
        "trainable_parameters": trainer.trainable_parameters, "attn": trainer.attn_implementation,
    }
    # (a) two optimizer steps over rows of the real shape
    rows = 2 * cfg.micro_batch_size
    calls = synthetic_calls(rows, prompt, response, trainer.policy.config.vocab_size)
    advantages = [1.0 if i % 2 else -1.0 for i in range(rows)]
    gradients = watch_gradients(trainer)
    _reset_peak()
    times = []
    for _ in range(2):
        started = time.perf_counter()
        stats = trainer.policy_update([(calls, advantages)])
        _sync()
        times.append(time.perf_counter() - started)
    gradients["handle"].remove()
    if not stats or not all(torch.isfinite(torch.tensor(v)) for v in stats.values()):
        raise RuntimeError(f"update at real shape gave {stats}")
    out["update"] = {"step_s": round(times[-1], 2), "tokens_per_s": round(rows * (prompt + response) / times[-1], 1),
                     **_peak(), **state_gib(trainer, gradients), **update_mfu(trainer, calls, times[-1])}
    try:
        out["update"].update(planner_estimate(real, prompt, response, out["update"]))
    except Exception as exc:  # noqa: BLE001 - the estimate is a comparison: the measurement must survive it
        out["update"]["estimate_error"] = f"{type(exc).__name__}: {exc}"[:500]
    # (b) two whole GRPO steps through the agent
    # train_step resets CUDA's peak counters at its start (its hw/ metrics are per step), so the
    # peak over both steps is the largest of the steps' own figures.
    result = None
    peaks: dict[str, float | None] = {"peak_gib": None, "reserved_gib": None}
    for _ in range(2):
        result = trainer.train_step()
        for key, metric in (("peak_gib", "hw/peak_gib"), ("reserved_gib", "hw/rank0/gpu_reserved_gib")):
            if metric in result.metrics:
                peaks[key] = round(max(peaks[key] or 0.0, result.metrics[metric]), 2)
    if not _cuda():
        peaks = {"peak_gib": None, "reserved_gib": None}  # on CPU hw/peak_gib is RSS, not a device figure
    m = result.metrics
    out["steps"] = {"step_s": round(m["time/step_s"], 2), "rollout_s": round(m["time/rollout_s"], 2),
                    "update_s": round(m["time/update_s"], 2), "tokens": int(m["tokens/total"]),
                    "calls_per_trajectory": round(m["calls_per_trajectory"], 2), "kl": m["kl"],
                    "capped": not full, **peaks}
    del trainer, result, calls
    _free()
    return out


def update_mfu(trainer, calls, seconds: float) -> dict:
    """The update's MFU by 6N and by executed FLOPs (bench/planner_check.py; the best case: unpadded rows)."""
    import planner_check  # bench/ is on sys.path; it imports this module's helpers, so not at the top

    return planner_check.update_mfu(trainer, calls, seconds)


def planner_out_of_sample(dry: bool) -> dict:
    """Planned vs measured for shapes the planner was not fitted on (LoRA, no checkpointing, ragged
    rows, beta 0, the rollout at the real prompt length, 2 DDP / FSDP2 processes), with MFU in both conventions."""
    import planner_check

    return planner_check.out_of_sample(dry)


# --------------------------------------------------------------------------- learning


def learns(dry: bool) -> dict:
    """bench/learn_check.py: GRPO on the tiny model under bf16_mixed with checkpointing raises the
    vowel-share reward (30 steps; the dry run 10, as tests/test_learn_check.py runs it on the CPU)."""
    import learn_check  # bench/ is this script's folder, so it is on sys.path

    return learn_check.learns(10, min_rise=0.05) if dry else learn_check.learns(30, min_rise=0.1)


# --------------------------------------------------------------------------- 3. generation and vLLM


def generation(path: str, attn: str, batch: int, new_tokens: int) -> dict:
    """HF backend tokens/s, eager decoding: ``batch`` prompts x ``new_tokens`` tokens (no stop)."""
    from memfactory.backends.hf import HFBackend
    from memfactory.config import ModelConfig
    from memfactory.types import SamplingParams

    backend = HFBackend.from_config(ModelConfig(path=path, dtype="bfloat16", attn=attn), decode="eager")
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    backend.generate(_prompts(2, 64), SamplingParams(max_new_tokens=4))  # warm-up (kernels, allocator)
    _reset_peak()
    started = time.perf_counter()
    out = backend.generate(_prompts(batch, 256), params)
    _sync()
    seconds = time.perf_counter() - started
    tokens = sum(len(g.response_ids) for g in out)
    impl = getattr(backend.model.config, "_attn_implementation", attn)
    del backend, out
    _free()
    return {"attn": impl, "batch": batch, "new_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), **_peak()}


def vllm_generation(path: str, batch: int, new_tokens: int) -> dict:
    from memfactory.backends.vllm_engine import VLLMBackend
    from memfactory.config import ModelConfig
    from memfactory.types import SamplingParams

    backend = VLLMBackend.from_config(ModelConfig(backend="vllm", path=path, dtype="bfloat16"), gpu_memory_utilization=0.4)
    backend.generate(_prompts(2, 64), SamplingParams(max_new_tokens=4))
    started = time.perf_counter()
    out = backend.generate(_prompts(batch, 256), SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0))
    seconds = time.perf_counter() - started
    tokens = sum(len(g.response_ids) for g in out)
    backend.close()  # one in-process vLLM engine at a time: the engine steps below start their own
    return {"batch": batch, "new_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def vllm_engine_steps(path: str, big: bool) -> dict:
    """LoRA GRPO steps with rollouts on the in-process vLLM engine, merged weights pushed every step."""
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    preset = load_preset(presets_dir() / "tiny_test.yaml", [
        f"model.path={path}", "model.dtype=bfloat16", "trainer.skip_equal_groups=false", "trainer.stop=[]",
        "trainer.group_size=8", "trainer.batch_size=1", f"trainer.max_new_tokens={128 if big else 8}",
        "agent_options.max_context_tokens=1024", "trainer.lr=1e-6", "trainer.lora={r: 16, alpha: 32}",
        "trainer.rollout.engine=vllm", "trainer.rollout.dtype=bfloat16",
        "trainer.rollout.options={gpu_memory_utilization: 0.3, max_model_len: 4096}"])
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"length": _Length()}, {"length": 1.0}
    for _ in range(2):
        trainer.train_step()
    _reset_peak()
    m = trainer.train_step().metrics
    out = {"seconds": round(m["time/step_s"], 2), "rollout_s": round(m["time/rollout_s"], 2),
           "sync_s": round(m.get("time/sync_s", 0.0), 3), "tokens_per_s": round(m["tokens_per_s"], 1), **_peak()}
    trainer.backend.close()
    del trainer
    _free()
    return out


def decode_speed(dry: bool) -> dict:
    """bench/decode_speed.py's measurement: eager, compiled and vLLM decoding at batch 16 and 64
    (the dry run: the tiny model at batch 2 and 4, compiled with aot_eager so it takes seconds)."""
    import decode_speed as bench  # bench/ is this script's folder, so it is on sys.path

    if dry:
        return bench.measure("tiny://qwen3-mini", dtype="bfloat16", batches=(2, 4), new_tokens=8, words=16,
                             compile_backend="aot_eager")
    return bench.measure("tiny://qwen3-1.7b-shape", dtype="bfloat16", batches=(16, 64), new_tokens=128, words=256)


def _needs(package: str, run):
    """Run a section only where ``package`` is installed and CUDA is present; say why not otherwise."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        return {"skipped": f"{package.replace('_', '-')} is not installed in this environment"}
    if not _cuda():
        return {"skipped": "no CUDA"}
    return run()


# --------------------------------------------------------------------------- driver


def plan(shape: str, full: bool) -> dict:
    """Section name -> callable, in the order they run (the checks that decide most come first)."""
    dry = shape == "qwen3-mini"
    small = f"tiny://{'qwen3-mini' if dry else 'qwen3-1.7b-shape'}"
    batch, new = (4, 16) if dry else (16, 256)
    sections = {"cuda_tests": cuda_tests, "learns": lambda: learns(dry)}
    for name, real_shape in GPU_PRESETS.items():
        sections[f"preset:{name}"] = lambda n=name, s=real_shape: preset_check(n, "qwen3-mini" if dry else s, full=full)
    sections["planner_out_of_sample"] = lambda: planner_out_of_sample(dry)
    sections.update({
        "generate_hf_sdpa": lambda: generation(small, "sdpa", batch, new),
        "generate_hf_flash_attention_2": lambda: _needs("flash_attn", lambda: generation(small, "flash_attention_2", batch, new)),
        "decode_speed": lambda: decode_speed(dry),
        "generate_vllm": lambda: _needs("vllm", lambda: vllm_generation(small, batch, new)),
        "grpo_step_lora_vllm_engine": lambda: _needs("vllm", lambda: vllm_engine_steps(small, not dry)),
    })
    return sections


def run_sections(sections: dict, only: list[str] | None, *, deadline: float | None = None,
                 save=None) -> dict:
    """Run each section in order; ``save(results)`` after every one, so a run cut off by the lease's
    time limit still leaves what it measured. Sections that would start past ``deadline``
    (``time.monotonic()``) are recorded as skipped, not started."""
    results = {}
    for name, run in sections.items():
        if only and name not in only:
            continue
        if deadline is not None and time.monotonic() > deadline:
            results[name] = {"skipped": "out of time (--budget-s)", "wall_s": 0.0}
            print(name, json.dumps(results[name]), flush=True)
            continue
        started = time.perf_counter()
        try:
            results[name] = run()
        except Exception as exc:  # noqa: BLE001 - record and go on: one failing section must not lose the rest
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        _free()  # after the except block: a failed section's frames (and its model) are released by now
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "trace"}), flush=True)
        if save is not None:
            save(results)
    return results


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:+.1f}%"


def markdown(info: dict, results: dict) -> str:
    lines = [f"## GPU check (`python bench/gpu_check.py`, {info['date']})", "",
             (f"{info['device']}; torch {info['torch']}, transformers {info['transformers']}; random-init models "
              "of the presets' real shapes (bfloat16 checkpoints)."), ""]
    presets = {k: v for k, v in results.items() if k.startswith("preset:")}
    if presets:
        lines += [("| preset | shape | precision | ckpt | row tokens x micro-batch | update s/step | update peak / reserved GiB "
                   "| planner estimate GiB (error) | weights / ref / grads / optim GiB (estimate) | 2 whole steps: s/step, peak GiB "
                   "| notes |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in presets.items():
            if "update" not in r:
                lines.append(f"| {name[7:]} | | | | | | | | | | {r.get('error', r.get('skipped', ''))} |")
                continue
            u, s = r["update"], r.get("steps", {})
            e = u.get("estimate_parts_gib", {})
            lines.append(
                f"| {name[7:]} | {r['shape']} | {r['precision']} | {r['gradient_checkpointing']} "
                f"| {r['row_tokens']} x {r['micro_batch_size']} | {u['step_s']} | {u['peak_gib']} / {u['reserved_gib']} "
                f"| {u.get('estimate_gib', '')} ({_pct(u.get('estimate_error_pct'))}) "
                f"| {u['weights_gib']} / {u['reference_gib']} / {u['grads_gib']} / {u['optimizer_gib']} "
                f"({' / '.join(str(e.get(k, '')) for k in ('weights', 'reference', 'grads', 'optimizer'))}) "
                f"| {s.get('step_s', '')}, {s.get('peak_gib', '')} | lora {r['lora']}, beta {r['beta']}, kl {s.get('kl', '')}, "
                f"MFU 6N {u.get('mfu_6n_pct')} % / executed {u.get('mfu_executed_pct')} % |")
        lines.append("")
    if "cases" in results.get("planner_out_of_sample", {}):
        import planner_check

        lines += ["### Planner out of sample (`bench/planner_check.py`)", "",
                  planner_check.markdown(results["planner_out_of_sample"]), ""]
    lines += ["| section | seconds | tokens/s | peak GiB | notes |", "|---|---|---|---|---|"]
    for name, r in results.items():
        if name.startswith("preset:") or (name == "decode_speed" and "rows" in r) or "cases" in r:
            continue
        note = r.get("skipped") or r.get("error") or r.get("summary") or ", ".join(
            f"{k} {r[k]}" for k in ("attn", "rollout_s", "sync_s") if k in r)
        lines.append(f"| {name} | {r.get('seconds', '')} | {r.get('tokens_per_s', '')} | {r.get('peak_gib', '')} | {note} |")
    if "rows" in results.get("decode_speed", {}):
        import decode_speed as bench

        lines += ["", "### Decode speed against the memory roofline (`bench/decode_speed.py`)", "",
                  bench.speed_markdown(results["decode_speed"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="real", help="'real' (each preset's own shape) or qwen3-mini for a CPU dry run")
    parser.add_argument("--sections", help="comma-separated section names to run (default: all)")
    parser.add_argument("--full", action="store_true", help="whole steps at the presets' own generation caps (long)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent))
    parser.add_argument("--budget-s", type=float, help="start no section after this many seconds (a lease's limit)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    import torch
    import transformers

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if _cuda() else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": args.shape,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(results: dict) -> None:
        (out / "gpu_check.json").write_text(json.dumps({"info": info, "results": results}, indent=2), encoding="utf-8")
        (out / "gpu_check.md").write_text(markdown(info, results), encoding="utf-8")

    results = run_sections(plan(args.shape, args.full), args.sections.split(",") if args.sections else None,
                           deadline=deadline, save=save)
    save(results)
    print(markdown(info, results))


if __name__ == "__main__":
    main()
