"""Decode speed against the memory roofline: eager vs static+compiled ``hf`` decoding vs vLLM.

(a) ``speed``: ``B`` distinct prompts (default 256 words each), ``N`` new tokens sampled at T=1
    (seeded, no stop strings), at each batch size in ``--batches`` (16 and 64), through
    ``HFBackend`` with ``model.options.decode`` eager and compiled, and through the in-process vLLM
    engine where vllm is installed (else "not installed"). Decode time = time(N tokens) -
    time(1 token), i.e. without the prefill; ms/step = decode time / (longest response - 1).

    Memory roofline: a decode step must read every weight once, so it cannot beat
    ``weight bytes / memory bandwidth`` (KV-cache reads, small at these prompt lengths, add to it).
    The bandwidth is measured on the device (a large tensor copy, read + write), or given with
    ``--bandwidth-gbs``. Reported: ms/step next to that bound and their ratio (1.0 = at the
    limit), plus tokens/s next to ``B / bound``. Beside it the compute side: the step's matmul
    FLOPs (2 x weights x B) at a measured large-matmul rate; on a CPU that, not memory, is the limit.

(b) ``--demo``: the CPU demo's rollout (presets/tiny_cpu_demo.yaml: SmolLM2-135M-Instruct + LoRA,
    4 prompts x 8 samples = 32 rows x <= 16 tokens, stop "}", T 0.7) through ``GRPOTrainer.rollout``,
    eager and compiled in one process, interleaved, medians of ``--repeats``; the first compiled
    call (the compilation) is reported separately, and the sampled tokens are checked to be equal.
    A rollout capped at 1 token times the prefill (+ first token); the rest is the decode steps.
    ``--profile``: per operator, the decode steps' self CPU ms per step (torch.profiler: a whole
    rollout minus one capped at 1 token). Times are this process's CPU seconds (``--wall``: wall
    clock), so other processes on a shared machine do not decide the comparison.

    OMP_NUM_THREADS=1 python bench/decode_speed.py --model smollm2-135m-instruct --batches 16 64 --new-tokens 32
    OMP_NUM_THREADS=1 python bench/decode_speed.py --demo --repeats 5 --profile
    python bench/decode_speed.py --model tiny://qwen3-1.7b-shape --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import load_model_and_tokenizer, resolve_model_path
from memfactory.config import ModelConfig
from memfactory.types import ChatPrompt, SamplingParams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(device: torch.device):
    """Wall time on a GPU; this process's CPU time on a CPU (a shared machine's other processes
    would otherwise decide the figures; with OMP_NUM_THREADS=1 it equals an idle machine's wall time)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def measure_bandwidth(device: torch.device, mib: int | None = None, repeats: int = 5) -> float:
    """Bytes/s of a large on-device copy (each byte read once and written once), best of ``repeats``."""
    mib = mib or (2048 if device.type == "cuda" else 256)
    source = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    clock, best = clock_for(device), float("inf")
    for _ in range(repeats):
        sync(device)
        started = clock()
        target.copy_(source)
        sync(device)
        best = min(best, clock() - started)
    moved = 2 * source.numel() * source.element_size()
    del source, target
    return moved / best


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 3) -> float:
    """FLOP/s of a large square matmul in ``dtype`` (best of ``repeats``): the compute side of the bound."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    clock, best = clock_for(device), float("inf")
    for _ in range(repeats):
        sync(device)
        started = clock()
        a @ b
        sync(device)
        best = min(best, clock() - started)
    return 2 * n**3 / best


def weight_bytes_per_step(model: Any) -> int:
    """Bytes of the weights one decode step reads: every parameter, less an untied input embedding
    table (a step looks up only ``B`` of its rows)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or inputs.weight.data_ptr() != outputs.weight.data_ptr():
        total -= inputs.weight.numel() * inputs.weight.element_size()
    return total


def prompts(n: int, words: int) -> list[ChatPrompt]:
    """Distinct prompts (no prefill sharing), as bench/gpu_check.py's generation section."""
    return [ChatPrompt([{"role": "user", "content": " ".join(["memory"] * words) + f" question {i}"}]) for i in range(n)]


def timed_generate(backend: Any, batch: list[ChatPrompt], params: SamplingParams, device: torch.device,
                   wall: bool = False) -> tuple[float, list]:
    clock = time.perf_counter if wall else clock_for(device)
    sync(device)
    started = clock()
    out = backend.generate(batch, params)
    sync(device)
    return clock() - started, out


def decode_row(engine: str, backend: Any, batch: int, new_tokens: int, words: int, device: torch.device,
               step_bound_s: float, flops_per_token: float = 0.0, flops: float = 0.0) -> dict:
    """One engine at one batch size: warm-up (compiles), then N tokens and 1 token, both timed."""
    work = prompts(batch, words)
    full = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    one = SamplingParams(max_new_tokens=1, temperature=1.0, seed=0)
    started = time.perf_counter()
    backend.generate(work, full)  # compiles the decode step for this batch (and the cache length)
    backend.generate(work, one)
    warm_s = time.perf_counter() - started
    wall = engine == "vllm"  # its engine core is a child process: this process's CPU time would miss it
    seconds, out = timed_generate(backend, work, full, device, wall)
    prefill_s, _ = timed_generate(backend, work, one, device, wall)
    lengths = [len(g.response_ids) for g in out]
    steps = max(max(lengths) - 1, 1)
    decode_s = max(seconds - prefill_s, 1e-9)
    step_s = decode_s / steps
    tokens = sum(n - 1 for n in lengths if n)
    return {
        "engine": engine, "batch": batch, "new_tokens": sum(lengths), "seconds": round(seconds, 3),
        "clock": "wall" if wall or device.type == "cuda" else "process CPU",
        "prefill_s": round(prefill_s, 3), "warmup_s": round(warm_s, 1),
        "tokens_per_s": round(tokens / decode_s, 1), "ms_per_step": round(1e3 * step_s, 2),
        "roofline_ms_per_step": round(1e3 * step_bound_s, 3),
        "roofline_tokens_per_s": round(batch / step_bound_s, 1),
        "roofline_ratio": float(f"{step_bound_s / step_s:.3g}"),
        # The compute side: a step's matmul FLOPs (2 x weights x rows) at the measured matmul rate.
        "compute_ms_per_step": float(f"{1e3 * flops_per_token * batch / flops:.3g}") if flops else None,
    }


def vllm_backend(path: str, dtype: str, device: torch.device) -> Any | None:
    """The in-process vLLM engine, or None when vllm is not installed (import guarded)."""
    from memfactory.backends.vllm_engine import VLLMBackend, vllm_available

    if not vllm_available():
        return None
    options = {"gpu_memory_utilization": 0.4} if device.type == "cuda" else {}
    return VLLMBackend.from_config(ModelConfig(path=resolve_model_path(path), dtype=dtype), **options)


def measure(path: str, *, dtype: str = "bfloat16", batches: tuple[int, ...] = (16, 64), new_tokens: int = 256,
            words: int = 256, compile_backend: str = "inductor", engines: tuple[str, ...] = ("eager", "compiled", "vllm"),
            bandwidth_gbs: float | None = None) -> dict:
    """Every engine at every batch size, next to the roofline; the result is JSON-ready."""
    model, tokenizer = load_model_and_tokenizer(ModelConfig(path=path, dtype=dtype, attn="sdpa"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    bandwidth = bandwidth_gbs * 1e9 if bandwidth_gbs else measure_bandwidth(device)
    weights = weight_bytes_per_step(model)
    bound = weights / bandwidth
    flops = measure_matmul_flops(device, model.dtype)
    flops_per_token = 2 * weights / next(model.parameters()).element_size()
    info = {"model": path, "dtype": dtype, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads", "bandwidth_gbs": round(bandwidth / 1e9, 1),
            "bandwidth_measured": bandwidth_gbs is None, "weights_gib": float(f"{weights / 2**30:.3g}"),
            "matmul_tflops": float(f"{flops / 1e12:.3g}"),
            "new_tokens": new_tokens, "prompt_words": words, "compile_backend": compile_backend,
            "clock": "wall" if device.type == "cuda" else "process CPU"}
    rows: list[dict] = []
    hf = {"eager": HFBackend(model, tokenizer, decode="eager"),
          "compiled": HFBackend(model, tokenizer, decode="compiled", compile_backend=compile_backend)}
    for engine in [e for e in engines if e in hf]:
        for batch in batches:
            rows.append(decode_row(engine, hf[engine], batch, new_tokens, words, device, bound, flops_per_token, flops))
            print(json.dumps(rows[-1]), flush=True)
    if "vllm" in engines:
        del hf, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        engine = vllm_backend(path, dtype, device)
        if engine is None:
            rows.append({"engine": "vllm", "skipped": "not installed"})
        else:
            for batch in batches:
                rows.append(decode_row("vllm", engine, batch, new_tokens, words, device, bound, flops_per_token, flops))
        print(json.dumps(rows[-1]), flush=True)
    return {**info, "rows": rows}


def speed_markdown(result: dict) -> str:
    source = "measured copy" if result["bandwidth_measured"] else "given"
    lines = [(f"{result['device']}, {result['model']} in {result['dtype']}: {result['weights_gib']} GiB of weights "
              f"read per step; memory bandwidth {result['bandwidth_gbs']} GB/s ({source}); prompts of "
              f"{result['prompt_words']} words, {result['new_tokens']} new tokens, compile backend "
              f"{result['compile_backend']}; {result['clock']} time; matmul rate {result['matmul_tflops']} TFLOP/s."),
             "", ("| engine | batch | decode tokens/s | ms/step | roofline ms/step | roofline tokens/s | share of roofline "
                  "| matmul-bound ms/step | first calls (compile) s |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['engine']} | | {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {r['engine']} | {r['batch']} | {r['tokens_per_s']} | {r['ms_per_step']} "
                     f"| {r['roofline_ms_per_step']} | {r['roofline_tokens_per_s']} | {100 * r['roofline_ratio']:.3g}% "
                     f"| {r['compute_ms_per_step']} | {r['warmup_s']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- (b) the demo's rollout


def demo_trainer(decode: str, compile_backend: str, workdir: Path) -> Any:
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", [
        f"model.options={{decode: {decode}, compile_backend: {compile_backend}}}", "logging.swanlab=disabled",
        f"logging.runs_dir={workdir}/runs", f"logging.runs_db={workdir}/runs/memfactory.db"])
    return GRPOTrainer(preset)


def rollout_tokens(trainer: Any, rng: torch.Tensor, max_new_tokens: int | None = None,
                   clock=time.process_time) -> tuple[float, list[list[int]]]:
    """One rollout of step 1's prompts from RNG state ``rng``: seconds of ``clock`` and the sampled
    ids (``max_new_tokens=1``: the prefill and first token only). The default clock counts this
    process's CPU seconds, so other processes on a shared machine do not decide a comparison."""
    torch.set_rng_state(rng)
    samples = trainer.batch_for_step(1, 0)
    cap = trainer.cfg.max_new_tokens
    trainer.cfg.max_new_tokens = max_new_tokens or cap
    try:
        started = clock()
        _, _, trajectories = trainer.rollout(samples)
        seconds = clock() - started
    finally:
        trainer.cfg.max_new_tokens = cap
    return seconds, [c.response_ids for t in trajectories for c in t.calls]


def demo(repeats: int, compile_backend: str, profile: bool, workdir: Path, clock=time.process_time) -> dict:
    trainers = {name: demo_trainer(name, compile_backend, workdir) for name in ("eager", "compiled")}
    rng = torch.get_rng_state()
    first: dict[str, float] = {}
    ids: dict[str, list[list[int]]] = {}
    for name, trainer in trainers.items():
        first[name], ids[name] = rollout_tokens(trainer, rng, clock=clock)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    firsts: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(repeats):  # interleaved: a busy shared machine slows both alike
        for name, trainer in trainers.items():
            seconds, again = rollout_tokens(trainer, rng, clock=clock)
            assert again == ids[name], f"{name}: the same RNG state sampled different tokens"
            times[name].append(seconds)
            firsts[name].append(rollout_tokens(trainer, rng, max_new_tokens=1, clock=clock)[0])
    rows = len(ids["eager"])
    tokens = sum(len(r) for r in ids["eager"])
    out = {"clock": "wall" if clock is time.perf_counter else "process CPU", "threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "rows": rows, "tokens": tokens, "same_tokens": ids["eager"] == ids["compiled"],
           "compile_backend": compile_backend, "repeats": repeats,
           "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    steps = max(len(r) for r in ids["eager"])
    out["decode_steps"] = steps
    for name in trainers:
        median, prefill = statistics.median(times[name]), statistics.median(firsts[name])
        out[name] = {"first_call_s": round(first[name], 2), "median_s": round(median, 3),
                     "min_s": round(min(times[name]), 3), "tokens_per_s": round(tokens / median, 1),
                     "prefill_and_first_token_s": round(prefill, 3),
                     "decode_ms_per_step": round(1e3 * (median - prefill) / max(steps - 1, 1), 1)}
    if profile:
        out["decode_ms_per_step_by_op"] = {name: profile_decode(trainer, rng, steps) for name, trainer in trainers.items()}
    return out


def op_times(trainer: Any, rng: torch.Tensor, max_new_tokens: int | None = None) -> dict[str, float]:
    """Self CPU seconds per operator (torch.profiler) over one rollout."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rollout_tokens(trainer, rng, max_new_tokens)
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def profile_decode(trainer: Any, rng: torch.Tensor, steps: int, top: int = 12) -> dict[str, float]:
    """What the decode steps spend their CPU time on: per operator, a whole rollout's self CPU time
    minus that of the rollout capped at 1 token (prefill and first token), per decode step, in ms."""
    full, prefill = op_times(trainer, rng), op_times(trainer, rng, max_new_tokens=1)
    decode = {op: (t - prefill.get(op, 0.0)) * 1e3 / max(steps - 1, 1) for op, t in full.items()}
    ranked = sorted(decode.items(), key=lambda kv: -kv[1])
    out = {op.replace("## ", "").split(" ")[0] if op.startswith("##") else op: round(ms, 2) for op, ms in ranked[:top]}
    out["(total)"] = round(sum(decode.values()), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    parser.add_argument("--prompt-words", type=int, default=None, help="default: 256 on CUDA, 64 on CPU")
    parser.add_argument("--engines", default="eager,compiled,vllm")
    parser.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth for the roofline (default: measured)")
    parser.add_argument("--demo", action="store_true", help="(b) the CPU demo's rollout, eager vs compiled")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="with --demo: decode time per operator (torch.profiler)")
    parser.add_argument("--wall", action="store_true", help="with --demo: time the wall clock, not this process's CPU")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    if args.demo:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            result = demo(args.repeats, args.compile_backend, args.profile, Path(folder),
                          clock=time.perf_counter if args.wall else time.process_time)
        print(json.dumps(result, indent=2))
    else:
        result = measure(args.model, dtype=args.dtype or ("bfloat16" if cuda else "float32"),
                         batches=tuple(args.batches), new_tokens=args.new_tokens or (256 if cuda else 32),
                         words=args.prompt_words or (256 if cuda else 64), compile_backend=args.compile_backend,
                         engines=tuple(args.engines.split(",")), bandwidth_gbs=args.bandwidth_gbs)
        print(speed_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
