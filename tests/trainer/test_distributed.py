"""``memfactory train`` under ``accelerate launch`` with two CPU processes (DDP over gloo).

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
and the gradient DDP leaves must equal the single-process gradient of the whole batch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from memfactory.paths import presets_dir, project_root
from memfactory.tracking.runs import RunsDB

ENTRY = Path(__file__).with_name("dist_train_entry.py")
STEPS = 4
BATCH = 3  # 2 prompts on rank 0, 1 on rank 1: uneven micro-batch counts too


def free_port() -> int:
    for _ in range(20):
        port = random.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def accelerate_launch(cwd: Path, *script_args: str, debug: Path | None = None) -> None:
    """Two CPU processes of ``dist_train_entry.py`` under ``accelerate launch`` (DDP over gloo)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if debug is not None:
        env["MEMFACTORY_DIST_DEBUG"] = str(debug)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(presets_dir() / "accelerate" / "ddp_cpu.yaml"),
        "--main_process_port", str(free_port()),
        str(ENTRY), *script_args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def launch(cwd: Path, *args: str) -> list[dict]:
    """``memfactory train`` of the tiny preset on two processes; returns the ranks' debug records."""
    debug = cwd / "debug"
    accelerate_launch(
        cwd,
        "train", str(presets_dir() / "tiny_test.yaml"), "--no-progress",
        "--set", "rewards={test_even_vowels: 1.0}",
        "--set", f"trainer.batch_size={BATCH}",
        "--set", "trainer.micro_batch_size=4",
        "--set", "trainer.save_every=2",
        *args,
        debug=debug,
    )  # fmt: skip
    return [json.loads((debug / f"rank-{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp")
    return root, launch(root, "--set", f"trainer.steps={STEPS}")


def test_two_process_training_is_consistent(uninterrupted):
    tmp_path, ranks = uninterrupted
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
    expected_steps = sum(1 for a, b in trained if a or b)
    assert ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == expected_steps > 0
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"]


def test_resume_under_two_processes_continues_exactly(uninterrupted, tmp_path):
    """Resumed from its step-2 checkpoint, the 4-step run redoes steps 3-4 exactly: same prompts,
    optimizer steps and weights (each rank's RNG is seeded from seed, step and rank)."""
    root, whole = uninterrupted
    shutil.copytree(root / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("memfactory.db*"))
    src, dst = sqlite3.connect(root / "runs" / "memfactory.db"), sqlite3.connect(tmp_path / "runs" / "memfactory.db")
    src.backup(dst)  # a consistent copy, WAL included
    src.close()
    dst.close()
    (run_id,) = [r.id for r in RunsDB(tmp_path / "runs" / "memfactory.db").list_runs()]
    shutil.rmtree(tmp_path / "runs" / run_id / "checkpoints" / f"step-{STEPS:06d}")
    resumed = launch(tmp_path, "--resume", run_id, "--set", f"trainer.steps={STEPS}")
    for rank in (0, 1):
        assert resumed[rank]["run_id"] == run_id
        assert resumed[rank]["steps"] == whole[rank]["steps"][2:]  # steps 3 and 4, same rollouts
        assert resumed[rank]["optimizer_steps"] == whole[rank]["optimizer_steps"]
        assert resumed[rank]["param_sha256"] == whole[rank]["param_sha256"]
    (record,) = RunsDB(tmp_path / "runs" / "memfactory.db").list_runs()
    assert record.status == "finished" and record.step == STEPS
    metrics = [json.loads(x) for x in (tmp_path / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]


def test_ddp_gradient_is_the_single_process_gradient_of_the_whole_batch(tmp_path):
    """Global normalisers x world size under DDP's average = the one-process gradient, per loss type,
    with uneven slices (rank 0: 5 sequences in 3 micro-batches; rank 1: 1 sequence and 2 idle passes)."""
    accelerate_launch(tmp_path, "gradient-check", str(tmp_path))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"grad-{rank}.json").read_text())
        assert sorted(result) == ["dapo", "dr_grpo", "grpo"]
        for loss_type, r in result.items():
            assert r["max_grad"] > 1e-2, loss_type
            assert r["max_diff"] < 1e-5, (loss_type, r)


def test_sharded_weights_are_refused_with_a_clear_error():
    from types import SimpleNamespace

    import pytest
    from accelerate.utils import DistributedType

    from memfactory.errors import MemFactoryError
    from memfactory.trainer.distributed import require_replicated_weights

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        require_replicated_weights(SimpleNamespace(distributed_type=kind))  # replicated: fine
    with pytest.raises(MemFactoryError, match="FSDP.*not supported yet.*ddp.yaml"):
        require_replicated_weights(SimpleNamespace(distributed_type=DistributedType.FSDP))
    zero3 = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    )
    with pytest.raises(MemFactoryError, match="ZeRO-3"):
        require_replicated_weights(zero3)
