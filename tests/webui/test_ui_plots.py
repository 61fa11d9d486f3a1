"""Metric figures: right traces for real-shaped metrics, an annotated empty figure for no data."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from memfactory.tracking import metric_keys as keys
from webui import plots


def _metrics(n=5):
    """Records shaped as the trainer writes them to metrics.jsonl (names from metric_keys)."""
    return [{keys.STEP: s, keys.TIME: 1.0 + s, keys.REWARD_MEAN: 0.1 * s, keys.REWARD_STD: 0.05,
             keys.reward_part("sub_em"): 0.1 * s, keys.reward_part("format"): 1.0, keys.REWARD_MAX: 1.0,
             keys.LOSS: 1.0 / s, keys.KL: 0.01 * s, keys.RESPONSE_LENGTH_MEAN: 20 + s, keys.CLIP_RATIO: 0.0}
            for s in range(1, n + 1)]


def _annotation(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


@pytest.mark.parametrize("empty", [None, [], pd.DataFrame(), [{"step": 1}], [{"step": 1, "loss": None}]])
def test_every_figure_handles_no_data(empty):
    figures = plots.all_figures(empty)
    assert set(figures) == {"reward", "distribution", "loss", "kl", "length", "clip"}
    for fig in figures.values():
        assert "no data yet" in _annotation(fig)
    assert "no runs" in _annotation(plots.overlay_figure({}))
    assert "no runs" in _annotation(plots.overlay_figure({"a": None, "b": []}))


def test_reward_figure_has_band_mean_and_parts():
    fig = plots.reward_figure(_metrics())
    names = [trace.name for trace in fig.data]
    assert "reward (mean)" in names and "± std" in names
    assert {"sub_em", "format"} <= set(names) and "max" not in names  # parts, not the summaries
    mean = next(t for t in fig.data if t.name == "reward (mean)")
    assert list(mean.x) == [1, 2, 3, 4, 5] and mean.y[-1] == pytest.approx(0.5)
    upper = fig.data[0]
    assert upper.y[0] == pytest.approx(0.15)  # mean + std


def test_scalar_figures_pick_their_metric_and_sort_by_step():
    rows = list(reversed(_metrics()))  # out of order on purpose
    loss = plots.loss_figure(rows)
    assert list(loss.data[0].x) == [1, 2, 3, 4, 5] and loss.data[0].y[0] == pytest.approx(1.0)
    assert plots.kl_figure(pd.DataFrame(rows)).data[0].y[-1] == pytest.approx(0.05)
    assert plots.length_figure(rows).data[0].y[0] == 21
    assert plots.clip_figure(rows).data[0].y[0] == 0.0


def test_non_numeric_and_nan_values_are_dropped():
    rows = [{"step": 1, "loss": "oops"}, {"step": 2, "loss": math.nan}, {"step": 3, "loss": 0.5}]
    fig = plots.loss_figure(rows)
    assert list(fig.data[0].x) == [3]


def test_distribution_from_samples_records():
    # the shape of samples.jsonl: one inner list of raw rewards per GRPO group
    records = [{"step": s, "rewards": [[0.0, 1.0, 1.0], [0.5, None]]} for s in range(1, 15)]
    fig = plots.reward_distribution_figure(json.loads(json.dumps(records)), last_steps=4)
    assert [t.name for t in fig.data] == ["step 11", "step 12", "step 13", "step 14"]
    assert sorted(fig.data[0].y) == [0.0, 0.5, 1.0, 1.0]


def test_overlay_has_one_curve_per_run_with_reward():
    fig = plots.overlay_figure({"run-a": _metrics(3), "run-b": pd.DataFrame(_metrics(4)), "run-c": [{"step": 1}]})
    assert [t.name for t in fig.data] == ["run-a", "run-b"]
    assert len(fig.data[1].x) == 4


def test_only_the_names_the_trainer_writes_are_read():
    """No alias guessing: ``reward`` or ``train/loss`` are not what the trainer writes, so nothing is drawn."""
    assert "no data yet" in _annotation(plots.reward_figure([{"step": 3, "reward": 0.7}]))
    assert "no data yet" in _annotation(plots.loss_figure([{"step": 3, "train/loss": 0.7}]))
    fig = plots.reward_figure([{"time": 1.0, keys.REWARD_MEAN: 0.7}])  # no step column: rows count from 0
    assert list(fig.data[0].x) == [0] and fig.data[0].y[0] == pytest.approx(0.7)


def test_hardware_figure_draws_whatever_hw_keys_are_present():
    cpu_rows = [{"step": s, "hw/rank0/rss_gib": 1.0 + s, "hw/rank1/rss_gib": 1.1, "hw/rank0/cpu_percent": 95.0,
                 "hw/rank1/cpu_percent": 90.0, "hw/rank0/peak_rss_gib": 2.0, "hw/peak_gib": 3.5} for s in (1, 2, 3)]
    fig = plots.hardware_figure(cpu_rows)
    names = sorted(trace.name for trace in fig.data)
    assert names == ["rank 0 cpu_percent", "rank 0 rss_gib", "rank 1 cpu_percent", "rank 1 rss_gib"]
    assert list(next(t for t in fig.data if t.name == "rank 0 rss_gib").y) == [2.0, 3.0, 4.0]
    assert "peak 3.50 GiB" in fig.layout.title.text
    gpu_rows = [{"step": 1, "hw/rank0/rss_gib": 1.0, "hw/rank0/gpu_allocated_gib": 4.0, "hw/rank0/gpu_reserved_gib": 5.0,
                 "hw/rank0/gpu_util_percent": 70.0, "hw/rank0/cpu_percent": 99.0}]
    names = sorted(trace.name for trace in plots.hardware_figure(gpu_rows).data)
    assert names == ["rank 0 gpu_allocated_gib", "rank 0 gpu_reserved_gib", "rank 0 gpu_util_percent"]
    for empty in (None, [], [{"step": 1, "loss": 0.1}], [{"step": 1, "hw/rank0/rss_gib": "n/a"}]):
        fig = plots.hardware_figure(empty)
        assert not fig.data and "no hardware metrics" in fig.layout.annotations[0].text
