"""What the trainer needs to run correctly under ``accelerate launch`` (all no-ops on one process).

Design (DDP, and FSDP2 with :mod:`memfactory.trainer.sharding`; see docs/distributed.md):

* Each rank rolls out its own slice of the step's prompts (``GRPOTrainer.batch_for_step``).
* Loss normalisers (sequences, tokens) are summed over all ranks, and each rank's loss is
  multiplied by the number of processes, so DDP's gradient *average* is exactly the gradient of
  the global mean loss — the same update one process would make on the whole batch.
* DDP all-reduces gradients inside ``backward`` and may broadcast buffers in ``forward``, so every
  rank must run the same number of training forward/backward passes. Ranks agree on the largest
  number of micro-batches; a rank with fewer (or with nothing to train on: all its groups were
  skipped) runs zero-valued passes over one token (:func:`idle_loss`), which touch every
  parameter, so gradients stay in sync. Only the last pass synchronises (``no_sync`` before it).
  When no rank has anything to train on, all skip the optimizer step together.
* Every step seeds each rank's RNGs from (seed, step, rank): independent samples per rank and
  exact resumption (:func:`reseed_for_step`).
* Step metrics are computed over all ranks' trajectories (gathered), the run id is decided by
  rank 0 and broadcast, and only rank 0 writes the run folder, the runs database, SwanLab and
  checkpoints.

``MEMFACTORY_DIST_DEBUG=DIR`` makes every rank write ``DIR/rank-<i>.json`` at the end of a run
(run id, the sample ids it rolled out per step, optimizer steps taken, a checksum of its trainable
parameters) — the multi-process test compares them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memfactory.errors import MemFactoryError
from memfactory.trainer.sharding import fsdp_modules, local_numel, trainable_parameters

DEBUG_ENV = "MEMFACTORY_DIST_DEBUG"


def env_rank() -> int:
    """This process's global rank as ``accelerate launch`` / torchrun set it (0 when not launched)."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


def is_main_env() -> bool:
    return env_rank() == 0


def world(accelerator: Any) -> int:
    return int(getattr(accelerator, "num_processes", 1))


def broadcast_object(accelerator: Any, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if world(accelerator) == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gather_objects(accelerator: Any, obj: Any) -> list[Any]:
    """One ``obj`` per rank, in rank order, on every rank."""
    if world(accelerator) == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))


def all_reduce(accelerator: Any, values: list[float], op: str = "sum") -> list[float]:
    """Element-wise sum or max of ``values`` over ranks (float64)."""
    if world(accelerator) == 1:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def require_supported_sharding(accelerator: Any) -> None:
    """FSDP2 is supported (:mod:`memfactory.trainer.sharding`); FSDP1 and ZeRO-3 stop with a clear error.

    Every rank generates its own rollouts on its own schedule. Under FSDP2 the loop gathers the
    full weights for that phase; FSDP1's flat parameters and DeepSpeed ZeRO-3 have no such path
    here, and a forward pass over their shards on uneven schedules would hang.
    """
    from accelerate.utils import DistributedType

    kind = getattr(accelerator, "distributed_type", None)
    state = getattr(accelerator, "state", None)
    if kind == DistributedType.FSDP:
        version = getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", 1)
        if version != 2:
            raise MemFactoryError(
                f"accelerate FSDP version {version}: the GRPO loop supports FSDP2 only; set fsdp_version: 2 "
                "in the accelerate config (presets/accelerate/fsdp.yaml, see docs/distributed.md)"
            )
    plugin = getattr(state, "deepspeed_plugin", None)
    if kind == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3:
        raise MemFactoryError(
            "accelerate DeepSpeed ZeRO-3 is not supported: for sharded weights use FSDP2 "
            "(presets/accelerate/fsdp.yaml), or DDP (presets/accelerate/ddp.yaml) with trainer.lora "
            "and/or model.dtype bfloat16 (see docs/distributed.md)"
        )


def reseed_for_step(accelerator: Any, seed: int, step: int) -> None:
    """With several processes, seed every RNG from (seed, step, rank) at the start of a step.

    Ranks then sample independently of each other (one shared seed would give every rank the same
    random draws), and a resumed run continues exactly as an uninterrupted one would, although a
    checkpoint holds only rank 0's RNG state. One process keeps its single running RNG stream.
    """
    if world(accelerator) == 1:
        return
    value = int.from_bytes(hashlib.sha256(f"{seed}/{step}/{accelerator.process_index}".encode()).digest()[:8], "little")
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value % 2**63)


def idle_loss(model: torch.nn.Module, token_id: int, device: torch.device) -> torch.Tensor:
    """A zero-valued loss from a one-token forward pass: every parameter gets a (zero) gradient."""
    ids = torch.full((1, 1), int(token_id), dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    return logits.float().sum() * 0.0


# ----------------------------------------------------------------------------- test mode


class DebugRecorder:
    """Per-rank record for tests; active only when ``MEMFACTORY_DIST_DEBUG`` names a folder."""

    def __init__(self) -> None:
        folder = os.environ.get(DEBUG_ENV)
        self.folder = Path(folder) if folder else None
        self.steps: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.folder is not None

    def on_step(self, result: Any) -> None:
        if self.active:
            ids = sorted({t.sample.id for t in result.trajectories})
            kept = sum(1 for t in result.trajectories if not t.counters.get("skipped_group"))
            self.steps.append(
                {"step": result.step, "sample_ids": ids, "trajectories": len(result.trajectories), "trained": kept}
            )

    def write(self, trainer: Any, run_id: str | None) -> None:
        if not self.active or trainer is None:
            return
        acc = trainer.accelerator
        # Under FSDP every rank gathers the full parameters: the same checksum means in sync.
        params = list(trainable_parameters(trainer.policy))
        digest = hashlib.sha256()
        for name, param in params:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
        record = {
            "rank": acc.process_index,
            "num_processes": acc.num_processes,
            "run_id": run_id,
            "steps": self.steps,
            "optimizer_steps": max(steps) if steps else 0.0,
            "param_sha256": digest.hexdigest(),
            "param_sum": float(sum(p.detach().double().sum() for _, p in params)),
            "sharded_modules": len(fsdp_modules(trainer.policy)),
            "parameters": sum(p.numel() for p in trainer.policy.parameters()),
            "local_parameters": local_numel(trainer.policy),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank-{acc.process_index}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
