"""Canonical metric names: what the trainer writes each step, and what every plot and command reads.

The trainer (``trainer/loop.py`` step metrics, ``trainer/hardware.py``, ``trainer/rollout_engine.py``)
writes these names to ``metrics.jsonl``; the web UI's figures, the Train and Runs tabs,
``memfactory runs show`` and ``memfactory demo`` read them from here, never from a string of their own. A test
(``tests/tracking/test_metric_keys.py``) fails on a name that is read somewhere but never written.
"""

from __future__ import annotations

import re

# Every metrics.jsonl / samples.jsonl record (tracking/metrics.py MetricsWriter).
STEP = "step"
TIME = "time"

# Rewards over the step's trajectories.
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_MAX = "reward/max"
REWARD_MIN = "reward/min"
REWARD_PREFIX = "reward/"  # reward/<part>: the mean of one named reward part (reward/sub_em, ...)
REWARD_SUMMARIES = (REWARD_MEAN, REWARD_STD, REWARD_MAX, REWARD_MIN)

# Responses and the policy update.
RESPONSE_LENGTH_MEAN = "response_length/mean"
RESPONSE_LENGTH_MAX = "response_length/max"
CALLS_PER_TRAJECTORY = "calls_per_trajectory"
TOKENS_TOTAL = "tokens/total"
LOSS = "loss"
KL = "kl"
CLIP_RATIO = "clip_ratio"
GRAD_NORM = "grad_norm"
UPDATE_PREFIX = "update/"  # update/<stat>: every statistic of the policy update, as it came
SKIPPED_GROUP_FRACTION = "skipped_group_fraction"
COUNT_PREFIX = "count/"  # count/<counter>: trajectory counters summed over the step
SHARED_PREFILL_FRACTION = "rollout/shared_prefill_fraction"
POLICY_LAG = "rollout/policy_lag"  # a separate rollout engine only (trainer/rollout_engine.py)

# Time and throughput.
STEP_S = "time/step_s"
ROLLOUT_S = "time/rollout_s"
UPDATE_S = "time/update_s"
SYNC_S = "time/sync_s"  # a separate rollout engine only: pushing the weights to it
LR = "lr"
TOKENS_PER_S = "tokens_per_s"

# Hardware, per rank: hw/rank<r>/<field> (trainer/hardware.py), plus the peak over ranks.
HW_RSS = "rss_gib"
HW_PEAK_RSS = "peak_rss_gib"
HW_CPU = "cpu_percent"
HW_GPU_ALLOCATED = "gpu_allocated_gib"
HW_GPU_RESERVED = "gpu_reserved_gib"
HW_GPU_UTIL = "gpu_util_percent"
HW_FIELDS = (HW_RSS, HW_PEAK_RSS, HW_CPU, HW_GPU_ALLOCATED, HW_GPU_RESERVED, HW_GPU_UTIL)
HW_CUDA_FIELDS = (HW_GPU_ALLOCATED, HW_GPU_RESERVED, HW_GPU_UTIL)  # written on CUDA only
HW_PEAK_GIB = "hw/peak_gib"  # the largest device peak over ranks; the runs DB keeps its max as peak_gib
HW_RANK_KEY = re.compile(r"hw/rank(\d+)/(\w+)")

# samples.jsonl records (tracking/metrics.py MetricsWriter.write_samples).
GROUP_REWARDS = "rewards"  # one list of raw rewards per GRPO group
TRAJECTORIES = "samples"  # whole trajectory summaries, every trainer.sample_every steps


def hw_key(rank: int, field: str) -> str:
    """``hw/rank<rank>/<field>``; ``field`` is one of :data:`HW_FIELDS`."""
    if field not in HW_FIELDS:
        raise ValueError(f"unknown hardware field {field!r}; expected one of {', '.join(HW_FIELDS)}")
    return f"hw/rank{rank}/{field}"


def reward_part(name: str) -> str:
    """``reward/<name>``: the step's mean of the named reward part."""
    return f"{REWARD_PREFIX}{name}"
