"""Out-of-sample checks of the memory planner, and the update's MFU in both conventions.

The planner's constants were fitted on four H200 points (full fine-tuning, ``bf16_mixed``,
checkpointing, micro-batch 4, rows of one length: tests/planner/test_planner_costs.py checks that
fit). Each case here changes what those points held fixed: LoRA, no checkpointing, ragged response
lengths (uniform in [R/4, R]), beta 0, the rollout phase at the preset's real prompt length, two
DDP or FSDP2 processes on the one GPU. ``bench/gpu_check.py`` runs them as its
``planner_out_of_sample`` section and prints planned vs measured GiB (and, for updates, MFU by 6N
and by executed FLOPs: memfactory/planner/flops.py). Without a GPU:

    python bench/planner_check.py --predict          # the planned GiB for the real shapes (RESULTS.md)
    python bench/planner_check.py --shape qwen3-mini # every case on CPU with the tiny model (a dry run)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check as gc

from memfactory.tracking.process import free_port


@dataclass(frozen=True)
class Case:
    """One shape the planner was not fitted on: a GPU preset with overrides, and what to measure."""

    preset: str
    overrides: tuple[str, ...] = ()
    phase: str = "update"  # update | rollout | ddp | fsdp2 (two processes)
    ragged: bool = False  # responses uniform in [R/4, R] (a padding mask)
    new_tokens: int = 64  # rollout: tokens generated after the real prompt
    why: str = ""


CASES: dict[str, Case] = {
    "lora_4b": Case("memagent_qwen3_4b", ("trainer.lora={r: 16, alpha: 32}",),
                    why="LoRA: bf16 base, fp32 adapters, no reference copy"),
    "no_ckpt_1.7b": Case("memagent_qwen3_1.7b", ("trainer.gradient_checkpointing=false", "trainer.micro_batch_size=1"),
                         why="every layer's activations held, cast copies kept for the backward"),
    "ragged_1.7b": Case("memagent_qwen3_1.7b", ragged=True, why="padding mask: K/V repeated per query head"),
    "beta0_4b": Case("memory_r1_qwen3", ("trainer.beta=0",), why="no reference; fused AdamW step"),
    "rollout_1.7b": Case("memagent_qwen3_1.7b", phase="rollout",
                         why="generation at the real prompt length: fp32 keys, autocast copies, no gradients"),
    "ddp2_1.7b": Case("memagent_qwen3_1.7b", ("trainer.micro_batch_size=2",), phase="ddp",
                      why="2 DDP processes on one GPU (gloo): gradients as bucket views"),
    "fsdp2_1.7b": Case("memagent_qwen3_1.7b", ("trainer.micro_batch_size=2",), phase="fsdp2",
                       why="2 FSDP2 processes on one GPU (gloo, if it reduce-scatters CUDA tensors): sharded state"),
}
# accelerate's FSDP2 settings, as `accelerate launch` exports them from presets/accelerate/fsdp.yaml.
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
            "FSDP_OFFLOAD_PARAMS": "false", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}


def case_preset(name: str, dry: bool):
    """The case's preset on the random model of its real shape (the tiny one in a dry run)."""
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir

    case = CASES[name]
    shape = "qwen3-mini" if dry else gc.GPU_PRESETS[case.preset]
    common = [f"model.path=tiny://{shape}", "model.options={decode: eager}", "trainer.steps=2", "trainer.warmup_steps=0",
              "trainer.grad_accum=1", "trainer.skip_equal_groups=false", "trainer.stop=[]",
              *gc._data_overrides(case.preset, dry)]
    return load_preset(presets_dir() / f"{case.preset}.yaml", [*common, *case.overrides])


def row_lengths(name: str, dry: bool) -> tuple[int, list[int]]:
    """(prompt, responses) of the rows the case measures: ``2 x micro_batch`` rows of the preset's
    longest call; ragged responses drawn uniform in [R/4, R] (seeded)."""
    from memfactory.backends.shape import preset_shape

    preset = case_preset(name, dry)
    prompt, response, _ = preset_shape(case_preset(name, False))
    if dry:
        prompt, response = 96, 16
    rows = 2 * preset.trainer.micro_batch_size
    if not CASES[name].ragged:
        return prompt, [response] * rows
    rng = random.Random(0)
    return prompt, [rng.randint(response // 4, response) for _ in range(rows)]


def planned_gib(name: str, dry: bool, *, prompt_tokens: int | None = None) -> dict:
    """The planner's phase for the case's rows (allocated GiB, as torch.cuda.max_memory_allocated)."""
    from memfactory.planner.plan import estimate_memory

    case = CASES[name]
    preset = case_preset(name, dry)
    prompt, lengths = row_lengths(name, dry)
    if case.phase == "rollout":
        plan = estimate_memory(preset, gpu_mem_gib=141, call_shape=(prompt_tokens or prompt, case.new_tokens),
                               padded=False)  # one prompt for every row: no padding mask
        return {"planned_gib": round(plan.phases["rollout"], 2), "kv_cache_gib": round(plan.components["kv_cache"], 2)}
    gpus, strategy = (2, case.phase) if case.phase in ("ddp", "fsdp2") else (1, None)
    plan = estimate_memory(preset, gpus=gpus, strategy=strategy, gpu_mem_gib=141,
                           call_shape=(prompt, max(lengths)), padded=case.ragged)
    return {"planned_gib": round(plan.phases["update"], 2), "planned_moment": plan.update_moment}


def _calls(prompt: int, lengths: list[int], vocab: int):
    calls = gc.synthetic_calls(len(lengths), prompt, max(lengths), vocab)
    for call, n in zip(calls, lengths):
        call.response_ids, call.logprobs = call.response_ids[:n], call.logprobs[:n]
    return calls


_RATE: dict[str, float] = {}


def matmul_rate() -> float:
    """The device's bf16 matmul FLOP/s, measured once (the MFU denominator, as RESULTS.md's 790 TFLOP/s)."""
    import decode_speed
    import torch

    if "rate" not in _RATE:
        device = torch.device("cuda" if gc._cuda() else "cpu")
        _RATE["rate"] = decode_speed.measure_matmul_flops(device, torch.bfloat16)
    return _RATE["rate"]


def update_mfu(trainer, calls, seconds: float) -> dict:
    """MFU of one update over ``calls`` that took ``seconds``: 6N over the real tokens and the executed
    matmul FLOPs of its micro-batches as the update packs them (memfactory/planner/flops.py)."""
    from memfactory.backends.shape import model_shape
    from memfactory.planner.flops import UpdateWork, mfu, update_flops
    from memfactory.trainer.batching import pack_calls, split_micro_batches

    cfg = trainer.cfg
    batch = pack_calls(calls, pad_id=trainer.tokenizer.pad_token_id)
    micro = []
    for idx in split_micro_batches(batch, cfg.micro_batch_size):
        mb = batch.select(idx)
        micro.append(tuple((int(mb.attention_mask[i, :mb.prompt_width].sum()), int(mb.response_mask[i].sum()))
                           for i in range(mb.num_rows)))
    work = UpdateWork(micro_batches=tuple(micro), checkpointing=cfg.gradient_checkpointing,
                      reference=cfg.beta > 0, old_pass=cfg.num_iterations > 1,
                      lora_r=cfg.lora.r if cfg.lora else None,
                      lora_targets=tuple(cfg.lora.target_modules) if cfg.lora else ())
    flops = update_flops(model_shape(trainer.preset.model.path), work)
    rate = matmul_rate()
    return {"matmul_tflops": round(rate / 1e12, 1),
            "mfu_6n_pct": round(100 * mfu(flops["model_6n"], seconds, rate), 1),
            "mfu_executed_pct": round(100 * mfu(flops["executed"], seconds, rate), 1)}


def _measure_update(trainer, prompt: int, lengths: list[int]) -> dict:
    calls = _calls(prompt, lengths, trainer.policy.config.vocab_size)
    advantages = [1.0 if i % 2 else -1.0 for i in range(len(calls))]
    gc._reset_peak()
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        trainer.policy_update([(calls, advantages)])
        gc._sync()
        seconds = time.perf_counter() - started
    tokens = sum(len(c.prompt_ids) + len(c.response_ids) for c in calls)
    return {"step_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            **gc._peak(), **update_mfu(trainer, calls, seconds)}


def _measure_rollout(trainer, prompt: int, new_tokens: int) -> dict:
    """One update (AdamW state exists, gradients freed), then the rollout's rows at the real prompt length."""
    from memfactory.backends.shape import model_shape
    from memfactory.planner.costs import knobs
    from memfactory.types import SamplingParams

    trainer.policy_update([(_calls(prompt, [new_tokens] * 2, trainer.policy.config.vocab_size), [1.0, -1.0])])
    backend = trainer.backend
    one = gc._prompts(1, 1)[0]
    overhead = len(backend.render_prompt(one)) - 1
    prompts = gc._prompts(1, max(prompt - overhead, 1))
    length = len(backend.render_prompt(prompts[0]))
    rows = knobs(trainer.preset, 1, "single", "cuda", model_shape(trainer.preset.model.path)).rollout_rows
    trainer.policy.eval()
    gc._reset_peak()
    started = time.perf_counter()
    import torch

    with torch.no_grad(), trainer.autocast():
        out = backend.generate(prompts * rows, SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0))
    gc._sync()
    return {"rows": rows, "prompt_tokens": length, "new_tokens": max(len(g.response_ids) for g in out),
            "seconds": round(time.perf_counter() - started, 2), **gc._peak()}


def _two_processes(name: str, dry: bool) -> dict:
    """Two processes (torch.distributed.run, gloo) on this one device, each measuring its own peak."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(Path(__file__)), "--ddp-child", name, "--out", out, *(["--shape", "qwen3-mini"] if dry else [])]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(FSDP_ENV if CASES[name].phase == "fsdp2" else {})}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"2-process run exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
        ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {**ranks[0], "peak_gib_ranks": [r["peak_gib"] for r in ranks]}


def ddp_child(name: str, dry: bool, out: str) -> None:
    """One rank of :func:`_two_processes`: both on device 0 (NCCL refuses two ranks on one GPU; gloo does not)."""
    os.environ["LOCAL_RANK"] = "0"
    from accelerate import PartialState

    from memfactory.trainer.loop import GRPOTrainer

    PartialState(backend="gloo", cpu=not gc._cuda())
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        trainer = GRPOTrainer(case_preset(name, dry))
        prompt, lengths = row_lengths(name, dry)
        result = _measure_update(trainer, prompt, lengths)
        # FSDP2 on CPU processes is set up by the trainer (sharding.enable_fsdp_on_cpu): ask the model
        result["strategy"] = "FSDP2" if trainer.sharded else trainer.accelerator.distributed_type.value
        rank = trainer.accelerator.process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def measure(name: str, dry: bool) -> dict:
    """Planned vs measured for one case."""
    from memfactory.trainer.loop import GRPOTrainer

    case = CASES[name]
    if case.phase in ("ddp", "fsdp2"):
        result = _two_processes(name, dry)
    else:
        with tempfile.TemporaryDirectory() as work:
            cwd = os.getcwd()
            os.chdir(work)
            try:
                trainer = GRPOTrainer(case_preset(name, dry))
                prompt, lengths = row_lengths(name, dry)
                if case.phase == "rollout":
                    result = _measure_rollout(trainer, prompt, case.new_tokens)
                else:
                    result = _measure_update(trainer, prompt, lengths)
                del trainer
            finally:
                os.chdir(cwd)
    plan = planned_gib(name, dry, prompt_tokens=result.get("prompt_tokens"))
    error = None
    if result.get("peak_gib"):
        error = round(100 * (plan["planned_gib"] - result["peak_gib"]) / result["peak_gib"], 1)
    gc._free()
    return {"why": case.why, **plan, **result, "error_pct": error}


def out_of_sample(dry: bool) -> dict:
    """bench/gpu_check.py's section: every case, each failure recorded and the rest going on."""
    results = {}
    for name in CASES:
        try:
            results[name] = measure(name, dry)
        except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        gc._free()
    return {"cases": results}


def markdown(section: dict) -> str:
    lines = ["| case | planned GiB (moment) | measured peak GiB | error | tokens/s | MFU 6N / executed | why |",
             "|---|---|---|---|---|---|---|"]
    for name, r in section["cases"].items():
        if "error" in r and "planned_gib" not in r:
            lines.append(f"| {name} | | | | | | {r['error'][:200]} |")
            continue
        mfu = f"{r['mfu_6n_pct']} % / {r['mfu_executed_pct']} %" if "mfu_6n_pct" in r else ""
        lines.append(f"| {name} | {r['planned_gib']} ({r.get('planned_moment', 'rollout')}) | {r.get('peak_gib')} "
                     f"| {gc._pct(r.get('error_pct'))} | {r.get('tokens_per_s', '')} | {mfu} | {r['why']} |")
    return "\n".join(lines) + "\n"


def predictions() -> str:
    """The planned GiB of every case at the real shapes, computed here without a GPU."""
    lines = ["| case | preset + overrides | rows (prompt + response) | planned GiB | moment |", "|---|---|---|---|---|"]
    for name, case in CASES.items():
        prompt, lengths = row_lengths(name, False)
        plan = planned_gib(name, False)
        rows = (f"{case.new_tokens} new tokens after the prompt (the preset's rollout rows)" if case.phase == "rollout"
                else f"{len(lengths)} x ({prompt} + {'/'.join(map(str, lengths)) if case.ragged else lengths[0]})")
        lines.append(f"| {name} | {case.preset} {' '.join(case.overrides)} | {rows} | {plan['planned_gib']} "
                     f"| {plan.get('planned_moment', 'rollout')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predict", action="store_true", help="print the planned GiB for the real shapes and stop")
    parser.add_argument("--shape", default="real", help="'real', or qwen3-mini for a CPU dry run")
    parser.add_argument("--ddp-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dry = args.shape == "qwen3-mini"
    if args.ddp_child:
        ddp_child(args.ddp_child, dry, args.out)
    elif args.predict:
        print(predictions())
    else:
        section = out_of_sample(dry)
        print(json.dumps(section, indent=2))
        print(markdown(section))


if __name__ == "__main__":
    main()
