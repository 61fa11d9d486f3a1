"""``memfactory train`` under ``accelerate launch`` with two CPU processes over gloo: DDP
(``ddp_cpu.yaml``) and FSDP2 with sharded weights (``fsdp_cpu.yaml``); every check runs for both.

Real launches (~25 s each on two busy cores) of the tiny preset, checked through the per-rank
records that ``MEMFACTORY_DIST_DEBUG`` makes every rank write, the run folder and the runs DB.
``tests/trainer/dist_train_entry.py`` is ``python -m memfactory`` plus a test-only reward that
gives the tiny model a signal on even samples only. A 4-step run checks that

* it finishes, with one run row and one run folder, named by rank 0 and known to rank 1;
* each rank rolled out its own slice of every step's prompts (disjoint, together the full batch);
* the reward spreads over all ranks' groups (samples.jsonl holds every group's rewards);
* on steps where one rank had nothing to train on (all its groups skipped) and the other had,
  both still took the optimizer step, and the parameters end bit-identical on both ranks.

That run resumed from its step-2 checkpoint must then redo steps 3-4 exactly (rollouts, weights),
and the gradient DDP/FSDP leaves must equal the single-process gradient of the whole batch.
Under FSDP each rank must hold about half of the weights, checkpoints hold full state dicts, and
the run must reach the DDP run's rewards and weights (up to float rounding).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from memfactory.paths import presets_dir, project_root
from memfactory.tracking.process import free_port
from memfactory.tracking.runs import RunsDB

ENTRY = Path(__file__).with_name("dist_train_entry.py")
STEPS = 4
BATCH = 3  # 2 prompts on rank 0, 1 on rank 1: uneven micro-batch counts too


ADAPTERS = [
    "--set",
    "trainer.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}",
    "--set",
    "trainer.lr=1e-3",
]
LORA = [
    *ADAPTERS,
    "--set", "trainer.beta=0.1",  # the reference is the policy with adapters disabled
    "--set", "trainer.num_iterations=2",  # no-grad scoring of old log-probs too
]  # fmt: skip
ENGINE = [*ADAPTERS, "--set", "trainer.rollout={engine: hf, sync_every: 1}"]  # merged weights pushed every step
MEMAGENT = ["--set", "trainer.steps=3", "--set", "trainer.save_every=1"]  # several calls per rollout


class Case(NamedTuple):
    config: str  # presets/accelerate/<config>.yaml
    args: list[str]  # extra ``memfactory train`` arguments
    preset: str = "tiny_test.yaml"


CASES = {
    "ddp": Case("ddp_cpu", []),
    "fsdp": Case("fsdp_cpu", []),
    "ddp_lora": Case("ddp_cpu", LORA),
    "fsdp_lora": Case("fsdp_cpu", LORA),
    "ddp_engine": Case("ddp_cpu", ENGINE),
    "fsdp_engine": Case("fsdp_cpu", ENGINE),
    "ddp_memagent": Case("ddp_cpu", MEMAGENT, "memagent_tiny_test.yaml"),
    "fsdp_memagent": Case("fsdp_cpu", MEMAGENT, "memagent_tiny_test.yaml"),
    # MemAgent's own reward: the tiny model never scores, so no group has signal and nothing trains
    "fsdp_untrained": Case("fsdp_cpu", [*MEMAGENT, "--set", "rewards={sub_em: 1.0}"], "memagent_tiny_test.yaml"),
}
TINY_CASES = [name for name, case in CASES.items() if case.preset == "tiny_test.yaml"]


def accelerate_launch(cwd: Path, config: str, *script_args: str, debug: Path | None = None) -> None:
    """Two CPU processes of ``dist_train_entry.py`` under ``accelerate launch`` (gloo)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if debug is not None:
        env["MEMFACTORY_DIST_DEBUG"] = str(debug)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(presets_dir() / "accelerate" / f"{config}.yaml"),
        "--main_process_port", str(free_port()),
        str(ENTRY), *script_args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def launch(cwd: Path, config: str, *args: str, preset: str = "tiny_test.yaml") -> list[dict]:
    """``memfactory train`` of a tiny preset on two processes; returns the ranks' debug records."""
    debug = cwd / "debug"
    accelerate_launch(
        cwd,
        config,
        "train", str(presets_dir() / preset), "--no-progress",
        "--set", "rewards={test_even_vowels: 1.0}",
        "--set", f"trainer.batch_size={BATCH}",
        "--set", "trainer.micro_batch_size=4",
        "--set", "trainer.save_every=2",
        *args,
        debug=debug,
    )  # fmt: skip
    return [json.loads((debug / f"rank-{r}.json").read_text()) for r in (0, 1)]


@dataclass
class Run:
    root: Path
    ranks: list[dict]  # the ranks' debug records
    case: str

    @property
    def config(self) -> str:
        return CASES[self.case].config

    @property
    def record(self) -> Any:
        (record,) = RunsDB(self.root / "runs" / "memfactory.db").list_runs()
        return record

    @property
    def run_id(self) -> str:
        return self.record.id

    def checkpoint(self, step: int | None = None) -> Path:
        """The checkpoint of ``step`` (default: the run's last step)."""
        step = self.record.step if step is None else step
        return self.root / "runs" / self.run_id / "checkpoints" / f"step-{step:06d}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[str], Run]:
    """The uninterrupted ``STEPS``-step run of a case, launched once per module."""
    done: dict[str, Run] = {}

    def get(case: str) -> Run:
        if case not in done:
            root = tmp_path_factory.mktemp(case)
            config, extra, preset = CASES[case]
            done[case] = Run(root, launch(root, config, "--set", f"trainer.steps={STEPS}", *extra, preset=preset), case)
        return done[case]

    return get


@pytest.mark.parametrize("case", TINY_CASES)
def test_two_process_training_is_consistent(runs, case):
    run = runs(case)
    tmp_path, ranks = run.root, run.ranks
    assert [r["num_processes"] for r in ranks] == [2, 2]

    # one run: rank 0 named it, rank 1 learned the id, only rank 0 wrote
    runs = RunsDB(tmp_path / "runs" / "memfactory.db").list_runs()
    assert len(runs) == 1 and runs[0].status == "finished" and runs[0].step == STEPS
    assert runs[0].meta["num_processes"] == 2
    assert ranks[0]["run_id"] == ranks[1]["run_id"] == runs[0].id
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == [runs[0].id]
    run_dir = tmp_path / "runs" / runs[0].id
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", f"step-{STEPS:06d}"]

    # rollouts were split: per step, disjoint prompt sets that together make the whole batch
    for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        assert s0["step"] == s1["step"]
        assert len(s0["sample_ids"]) == 2 and len(s1["sample_ids"]) == 1
        assert not set(s0["sample_ids"]) & set(s1["sample_ids"])

    # metrics cover both ranks: every step logs all BATCH groups of 4 rewards
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [len(s["rewards"]) for s in samples] == [BATCH] * STEPS
    assert all(len(group) == 4 for s in samples for group in s["rewards"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m, s in zip(metrics, samples, strict=True):
        rewards = [r for group in s["rewards"] for r in group]
        assert m["reward/mean"] == pytest.approx(sum(rewards) / len(rewards))

    # some step had one rank idle (all groups skipped) while the other trained: both stepped anyway
    trained = [(s0["trained"], s1["trained"]) for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"])]
    assert any((a == 0) != (b == 0) for a, b in trained), trained
    iterations = 2 if "trainer.num_iterations=2" in CASES[case].args else 1
    expected_steps = iterations * sum(1 for a, b in trained if a or b)
    assert ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == expected_steps > 0
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"]


@pytest.mark.parametrize("case", ["ddp", "fsdp"])
def test_every_rank_logs_its_hardware_figures_each_step(runs, case):
    """Each rank measures itself and rank 0 logs both (``accelerator.gather`` over gloo): every
    step of metrics.jsonl has both ranks' memory and CPU figures, and the run's
    ``peak_gib`` is the largest ``hw/peak_gib`` (the larger rank's peak RSS on CPU)."""
    run = runs(case)
    metrics = [json.loads(line) for line in (run.root / "runs" / run.run_id / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        for rank in (0, 1):
            rss, peak, cpu = (m[f"hw/rank{rank}/{k}"] for k in ("rss_gib", "peak_rss_gib", "cpu_percent"))
            assert 0.1 < rss <= peak + 1e-3 < 64, (rank, rss, peak)  # torch + a model, under 64 GiB
            assert 0 <= cpu < 100 * (os.cpu_count() or 1) + 50, (rank, cpu)
        assert not any("gpu" in key for key in m)  # CPU run: no GPU figures
        assert m["hw/peak_gib"] == pytest.approx(max(m["hw/rank0/peak_rss_gib"], m["hw/rank1/peak_rss_gib"]))
    # two separate processes: their resident sizes are their own, not one number copied
    assert any(m["hw/rank0/rss_gib"] != m["hw/rank1/rss_gib"] for m in metrics)
    # the run's row keeps the largest peak (metrics.jsonl, checked above, is the one per-step store)
    assert run.record.peak_gib == pytest.approx(max(m["hw/peak_gib"] for m in metrics))


@pytest.mark.parametrize("case", ["ddp", "fsdp", "fsdp_lora"])
def test_resume_under_two_processes_continues_exactly(runs, case, tmp_path):
    """Resumed from its step-2 checkpoint, the 4-step run redoes steps 3-4 exactly: same prompts,
    optimizer steps and weights (each rank's RNG is seeded from seed, step and rank)."""
    run = runs(case)
    root, whole = run.root, run.ranks
    shutil.copytree(root / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("memfactory.db*"))
    src, dst = sqlite3.connect(root / "runs" / "memfactory.db"), sqlite3.connect(tmp_path / "runs" / "memfactory.db")
    src.backup(dst)  # a consistent copy, WAL included
    src.close()
    dst.close()
    (run_id,) = [r.id for r in RunsDB(tmp_path / "runs" / "memfactory.db").list_runs()]
    shutil.rmtree(tmp_path / "runs" / run_id / "checkpoints" / f"step-{STEPS:06d}")
    resumed = launch(tmp_path, run.config, "--resume", run_id, "--set", f"trainer.steps={STEPS}", *CASES[case].args)
    for rank in (0, 1):
        assert resumed[rank]["run_id"] == run_id
        assert resumed[rank]["steps"] == whole[rank]["steps"][2:]  # steps 3 and 4, same rollouts
        assert resumed[rank]["optimizer_steps"] == whole[rank]["optimizer_steps"]
        assert resumed[rank]["param_sha256"] == whole[rank]["param_sha256"]
    (record,) = RunsDB(tmp_path / "runs" / "memfactory.db").list_runs()
    assert record.status == "finished" and record.step == STEPS
    metrics = [json.loads(x) for x in (tmp_path / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]


@pytest.mark.parametrize("config", ["ddp_cpu", "fsdp_cpu"])
def test_gradient_is_the_single_process_gradient_of_the_whole_batch(tmp_path, config):
    """Global normalisers x world size under DDP's (or FSDP's reduce-scatter) average = the
    one-process gradient, per loss type, with uneven slices (rank 0: 5 sequences in 3
    micro-batches; rank 1: 1 sequence and 2 idle passes)."""
    accelerate_launch(tmp_path, config, "gradient-check", str(tmp_path))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"grad-{rank}.json").read_text())
        assert result.pop("sharded") is (config == "fsdp_cpu")
        storages, grads, storage_bytes, grad_bytes = result.pop("grad_storages")
        if config == "ddp_cpu":
            # The gradients are views into DDP's buckets (gradient_as_bucket_view): a few storages that
            # hold exactly the gradients, not one copy each beside the buckets.
            assert grads > 10 and storages < grads / 4 and storage_bytes == grad_bytes, result
        assert sorted(result) == ["dapo", "dr_grpo", "grpo"]
        for loss_type, r in result.items():
            assert r["max_grad"] > 1e-2, loss_type
            assert r["max_diff"] < 1e-5, (loss_type, r)


@pytest.mark.parametrize(
    "variant", ["", "_lora", "_engine", "_memagent"], ids=["full", "lora", "hf-engine", "memagent"]
)
def test_fsdp_shards_the_weights_and_trains_like_ddp(runs, variant):
    """Same seeds, same rollouts: FSDP2 ends where DDP does, each rank holding half the weights.
    With a separate engine, the same samples also mean the gathered weights reached the engine."""
    ddp, fsdp = runs("ddp" + variant), runs("fsdp" + variant)
    for rank in (0, 1):
        d, f = ddp.ranks[rank], fsdp.ranks[rank]
        assert d["sharded_modules"] == 0 and d["local_parameters"] == d["parameters"]
        assert f["sharded_modules"] > 1  # the decoder layers, embeddings and the root
        assert f["parameters"] == d["parameters"]
        assert f["local_parameters"] <= 0.55 * f["parameters"]
        assert f["steps"] == d["steps"]
        assert f["optimizer_steps"] == d["optimizer_steps"] > 0
        assert f["param_sum"] == pytest.approx(d["param_sum"], abs=1e-4)
    rewards = {}
    for run in (ddp, fsdp):
        lines = (run.root / "runs" / run.run_id / "samples.jsonl").read_text().splitlines()
        rewards[run.case] = [json.loads(line)["rewards"] for line in lines]
        state = json.loads((run.checkpoint() / "trainer_state.json").read_text())
        assert state["optimizer_keys"] == ("by_name" if run.config == "fsdp_cpu" else "by_index")
        assert state["peft"] is (variant in ("_lora", "_engine"))
    assert rewards[fsdp.case] == rewards[ddp.case]  # the same answers were sampled


def test_fsdp_checkpoint_is_a_full_model(runs):
    """The sharded run's checkpoint loads as an ordinary transformers model with the run's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    run = runs("fsdp")
    model = AutoModelForCausalLM.from_pretrained(run.checkpoint() / "model")
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert total == pytest.approx(run.ranks[0]["param_sum"], abs=1e-6)
    optimizer = torch.load(run.checkpoint() / "optimizer.pt", weights_only=True)
    assert set(optimizer["state"]) == {name for name, _ in model.named_parameters()}


def test_fsdp_lora_checkpoint_holds_the_adapters_only(runs):
    """Sharded LoRA saves what an unsharded LoRA run saves: the same adapter tensors, no base weights."""
    from safetensors.torch import load_file

    ddp = load_file(runs("ddp_lora").checkpoint() / "model" / "adapter_model.safetensors")
    fsdp = load_file(runs("fsdp_lora").checkpoint() / "model" / "adapter_model.safetensors")
    assert sorted(fsdp) == sorted(ddp) and all("lora_" in key for key in fsdp)
    for key, value in ddp.items():
        assert float((fsdp[key] - value).abs().max()) < 1e-4, key


def test_unsupported_sharding_is_refused_with_a_clear_error():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from memfactory.errors import MemFactoryError
    from memfactory.trainer.distributed import require_supported_sharding

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        require_supported_sharding(SimpleNamespace(distributed_type=kind))  # replicated: fine

    def fsdp(version: int) -> SimpleNamespace:
        plugin = SimpleNamespace(fsdp_version=version)
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))

    require_supported_sharding(fsdp(2))
    with pytest.raises(MemFactoryError, match="FSDP version 1.*FSDP2 only.*fsdp_version: 2"):
        require_supported_sharding(fsdp(1))
    zero3 = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    )
    with pytest.raises(MemFactoryError, match="ZeRO-3.*FSDP2"):
        require_supported_sharding(zero3)


def test_sharded_checkpoint_resumes_only_sharded_but_its_weights_load_anywhere(runs):
    """Resuming an FSDP checkpoint in one process stops clearly (its optimizer state is keyed by
    name); loading only its weights into an unsharded model works."""
    import torch

    from memfactory.backends.sources import load_model_and_tokenizer
    from memfactory.config import ModelConfig
    from memfactory.errors import MemFactoryError
    from memfactory.trainer.checkpoint import load_checkpoint

    run = runs("fsdp")
    model, _ = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini", dtype="float32"))
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(MemFactoryError, match=r"written by a sharded \(FSDP\) run; resume it with the same kind"):
        load_checkpoint(run.checkpoint(), model, optimizer, restore_rng=False)
    load_checkpoint(run.checkpoint(), model, restore_rng=False)
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert total == pytest.approx(run.ranks[0]["param_sum"], abs=1e-6)


def test_fsdp_checkpoint_before_any_update_leaves_the_optimizer_untouched(runs):
    """Saving before the first optimizer step must not create optimizer state (torch would take a
    zero-gradient step to do so, putting AdamW's step counter one ahead)."""
    from memfactory.backends.sources import load_model_and_tokenizer
    from memfactory.config import ModelConfig

    run = runs("fsdp_untrained")
    for rank in (0, 1):
        assert all(s["trained"] == 0 for s in run.ranks[rank]["steps"])
        assert run.ranks[rank]["optimizer_steps"] == 0
    initial, _ = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini", dtype="float32"))
    assert run.ranks[0]["param_sum"] == pytest.approx(
        sum(float(p.detach().double().sum()) for p in initial.parameters())
    )
    assert sorted(p.name for p in run.checkpoint().parent.iterdir()) == ["step-000002", "step-000003"]  # keep 2
