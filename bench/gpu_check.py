"""The GPU checks of issues 4 and 7, as one prepared script for a lent GPU machine.

On a Qwen3-1.7B-shaped random-init model in bfloat16 (``tiny://qwen3-1.7b-shape``, built
locally: no download), it measures

1. generation tokens/s with the ``hf`` backend, sdpa and (if flash-attn imports) FlashAttention-2;
2. generation tokens/s with the in-process vLLM engine, if vllm imports;
3. one GRPO step (group 8) with full fine-tuning and with LoRA: seconds, peak GPU memory, tokens/s;
4. one MemAgent GRPO step, group 8, over a 4-chunk context: seconds, peak memory, tokens/s;
5. LoRA GRPO steps with rollouts on the in-process vLLM engine (``trainer.rollout.engine: vllm``,
   merged weights pushed after every step), if vllm imports.

Every section runs on its own; a failure is recorded with its error and the rest go on.
Results go to ``--out`` (default ``$OUT`` or ``bench/``) as ``gpu_check.json`` and
``gpu_check.md``, ready to paste into bench/RESULTS.md.

    python bench/gpu_check.py                        # on the GPU machine (about 5-8 minutes)
    python bench/gpu_check.py --shape qwen3-mini     # a seconds-long dry run of the same code on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _reset_peak() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if _cuda() else None


def _prompts(n: int, words: int):
    from memfactory.types import ChatPrompt

    return [ChatPrompt([{"role": "user", "content": " ".join(["memory"] * words) + f" question {i}"}]) for i in range(n)]


def generation(path: str, attn: str, batch: int, new_tokens: int) -> dict:
    """HF backend tokens/s: ``batch`` prompts x ``new_tokens`` forced tokens (no stop, EOS ignored)."""
    import torch

    from memfactory.backends.hf import HFBackend
    from memfactory.config import ModelConfig
    from memfactory.types import SamplingParams

    backend = HFBackend.from_config(ModelConfig(path=path, dtype="bfloat16", attn=attn))
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    backend.generate(_prompts(2, 64), SamplingParams(max_new_tokens=4))  # warm-up (kernels, allocator)
    _reset_peak()
    started = time.perf_counter()
    out = backend.generate(_prompts(batch, 256), params)
    if _cuda():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(g.response_ids) for g in out)
    impl = getattr(backend.model.config, "_attn_implementation", attn)
    del backend
    if _cuda():
        torch.cuda.empty_cache()
    return {"attn": impl, "batch": batch, "new_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "peak_gib": _peak_gib()}


def vllm_generation(path: str, batch: int, new_tokens: int) -> dict:
    from memfactory.backends.sources import resolve_model_path
    from memfactory.backends.vllm_engine import VLLMBackend
    from memfactory.types import SamplingParams

    backend = VLLMBackend(resolve_model_path(path), dtype="bfloat16", gpu_memory_utilization=0.4)
    backend.generate(_prompts(2, 64), SamplingParams(max_new_tokens=4))
    started = time.perf_counter()
    out = backend.generate(_prompts(batch, 256), SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0))
    seconds = time.perf_counter() - started
    tokens = sum(len(g.response_ids) for g in out)
    return {"batch": batch, "new_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def grpo_steps(preset_name: str, overrides: list[str], steps: int = 2) -> dict:
    """``steps`` GRPO steps (the first warms up); reports the last one."""
    import torch

    from memfactory.config import load_preset
    from memfactory.envs.base import Reward
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    class Length(Reward):
        """A reward with variance in every group, so every step really updates."""

        name = "length"

        def score(self, trajectories):
            return [len(t.answer) / 100.0 for t in trajectories]

    preset = load_preset(presets_dir() / f"{preset_name}.yaml", overrides)
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"length": Length()}, {"length": 1.0}
    result = None
    for i in range(steps):
        if i == steps - 1:
            _reset_peak()
        result = trainer.train_step()
    m = result.metrics
    out = {
        "seconds": round(m["time/step_s"], 2),
        "rollout_s": round(m["time/rollout_s"], 2),
        "sync_s": round(m.get("time/sync_s", 0.0), 3),
        "update_s": round(m["time/update_s"], 2),
        "tokens": int(m["tokens/total"]),
        "tokens_per_s": round(m["tokens_per_s"], 1),
        "calls_per_trajectory": round(m["calls_per_trajectory"], 2),
        "trainable_parameters": trainer.trainable_parameters,
        "peak_gib": _peak_gib(),
        "attn": trainer.attn_implementation,
    }
    del trainer
    if _cuda():
        torch.cuda.empty_cache()
    return out


def sections(shape: str) -> dict:
    path = f"tiny://{shape}"
    big = shape != "qwen3-mini"
    batch, new = (16, 256) if big else (4, 16)
    model = [f"model.path={path}", "model.dtype=bfloat16", "trainer.skip_equal_groups=false", "trainer.stop=[]"]
    lora = "trainer.lora={r: 16, alpha: 32}"
    grpo = [*model, "trainer.group_size=8", "trainer.batch_size=1", f"trainer.max_new_tokens={128 if big else 8}",
            "agent_options.max_context_tokens=1024", "trainer.micro_batch_size=8", "trainer.lr=1e-6"]
    chunk = 1024 if big else 32
    memagent = [*model, "trainer.group_size=8", "trainer.batch_size=1", "trainer.micro_batch_size=8",
                "env.data=synthetic://hotpotqa?n=8&docs=40&seed=0", f"modules.memory.chunk_tokens={chunk}",
                "modules.memory.max_chunks=4", f"modules.memory.memory_tokens={256 if big else 8}",
                f"modules.memory.answer_tokens={64 if big else 8}", f"trainer.max_new_tokens={256 if big else 8}",
                "trainer.lr=1e-6"]
    plan = {
        "generate_hf_sdpa": lambda: generation(path, "sdpa", batch, new),
        "generate_hf_flash_attention_2": lambda: _needs("flash_attn", lambda: generation(path, "flash_attention_2", batch, new)),
        "generate_vllm": lambda: _needs("vllm", lambda: vllm_generation(path, batch, new)),
        "grpo_step_full": lambda: grpo_steps("tiny_test", grpo),
        "grpo_step_lora": lambda: grpo_steps("tiny_test", [*grpo, lora]),
        "memagent_grpo_step_4_chunks": lambda: grpo_steps("memagent_tiny_test", memagent),
        # rollouts on an in-process vLLM engine, LoRA weights merged and pushed after every step
        "grpo_step_lora_vllm_engine": lambda: _needs("vllm", lambda: grpo_steps("tiny_test", [
            *grpo, lora, "trainer.rollout.engine=vllm", "trainer.rollout.dtype=bfloat16",
            "trainer.rollout.options={gpu_memory_utilization: 0.3, max_model_len: 4096}"], steps=3)),
    }
    results = {}
    for name, run in plan.items():
        started = time.perf_counter()
        try:
            results[name] = run()
        except Exception as exc:  # noqa: BLE001 - record and go on: one failing section must not lose the rest
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "trace"}), flush=True)
    return results


def _needs(package: str, run):
    """Run a section only where ``package`` is installed and CUDA is present; say why not otherwise."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        return {"skipped": f"{package.replace('_', '-')} is not installed in this environment"}
    if not _cuda():
        return {"skipped": "no CUDA"}
    return run()


def markdown(info: dict, results: dict) -> str:
    lines = [f"## GPU check (`python bench/gpu_check.py`, {info['date']})", "",
             (f"{info['device']}; torch {info['torch']}, transformers {info['transformers']}; model "
              f"`tiny://{info['shape']}` (random init, bfloat16)."), "",
             "| section | seconds | tokens/s | peak GiB | notes |", "|---|---|---|---|---|"]
    for name, r in results.items():
        note = r.get("skipped") or r.get("error") or ", ".join(
            f"{k} {r[k]}" for k in ("attn", "rollout_s", "update_s", "trainable_parameters", "calls_per_trajectory") if k in r)
        lines.append(f"| {name} | {r.get('seconds', '')} | {r.get('tokens_per_s', '')} | {r.get('peak_gib', '')} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3-1.7b-shape", help="tiny:// architecture (qwen3-mini for a dry run)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent))
    args = parser.parse_args()
    import torch
    import transformers

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if _cuda() else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": args.shape,
    }
    started = time.perf_counter()
    from memfactory.backends.tiny import tiny_model_dir

    tiny_model_dir(f"tiny://{args.shape}")  # built once (random init + save), outside the timings
    info["build_s"] = round(time.perf_counter() - started, 1)
    results = sections(args.shape)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"info": info, "results": results}, indent=2), encoding="utf-8")
    (out / "gpu_check.md").write_text(markdown(info, results), encoding="utf-8")
    print(markdown(info, results))


if __name__ == "__main__":
    main()
