"""Plotly figures of a run's metrics (one row per optimizer step, as in ``metrics.jsonl``).

Metric names vary a little between writers (``reward/mean`` or ``reward``), so each figure looks
for the first of a few known keys. Missing data never raises: the figure says "no data yet".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

REWARD_MEAN = ("reward/mean", "reward", "reward_mean", "rewards/mean")
REWARD_STD = ("reward/std", "reward_std", "rewards/std")
RAW_REWARDS = ("rewards", "reward/raw", "group_rewards", "raw_rewards")
LOSS = ("loss", "train/loss")
KL = ("kl", "train/kl", "kl/mean")
LENGTH = ("response_length", "response_length/mean", "completion_length", "completions/mean_length")
CLIP = ("clip_ratio", "clip_ratio/mean", "clip_ratio/region_mean")
STEP = ("step", "global_step")
NOT_PARTS = {"mean", "std", "min", "max", "raw", "total"}


def to_frame(metrics: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a list of dicts or None, with a ``step`` column."""
    if metrics is None:
        return pd.DataFrame()
    frame = metrics.copy() if isinstance(metrics, pd.DataFrame) else pd.DataFrame(list(metrics))
    if frame.empty:
        return frame
    step = _first(frame, STEP)
    frame["step"] = pd.to_numeric(frame[step], errors="coerce") if step else range(len(frame))
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def empty_figure(title: str = "", message: str = "no data yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 16})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def reward_figure(metrics: Any) -> go.Figure:
    """Mean reward with a ±1 std band, plus every named reward part (``reward/<name>``)."""
    frame = to_frame(metrics)
    mean_key = _first(frame, REWARD_MEAN)
    parts = reward_parts(frame)
    if mean_key is None and not parts:
        return empty_figure("Reward")
    fig = go.Figure()
    if mean_key is not None:
        data = _numeric(frame, mean_key)
        std_key = _first(frame, REWARD_STD)
        if std_key is not None:
            band = data.assign(std=pd.to_numeric(frame.loc[data.index, std_key], errors="coerce").fillna(0.0))
            fig.add_trace(go.Scatter(x=band["step"], y=band["value"] + band["std"], mode="lines",
                                     line={"width": 0}, showlegend=False, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=band["step"], y=band["value"] - band["std"], mode="lines",
                                     line={"width": 0}, fill="tonexty", fillcolor="rgba(99,110,250,0.2)",
                                     name="± std"))
        fig.add_trace(go.Scatter(x=data["step"], y=data["value"], mode="lines+markers", name="reward (mean)",
                                 line={"color": "rgb(99,110,250)"}))
    for key in parts:
        data = _numeric(frame, key)
        fig.add_trace(go.Scatter(x=data["step"], y=data["value"], mode="lines", name=key.split("/", 1)[1],
                                 line={"dash": "dot"}))
    return _layout(fig, "Reward", "step", "reward")


def reward_parts(frame: pd.DataFrame) -> list[str]:
    """Columns like ``reward/sub_em`` (named reward parts), not the mean/std summaries."""
    return [c for c in frame.columns if isinstance(c, str) and c.startswith("reward/")
            and c.split("/", 1)[1] not in NOT_PARTS and _is_numeric(frame[c])]


def scalar_figure(metrics: Any, keys: Sequence[str], title: str, y_title: str = "") -> go.Figure:
    """One metric over steps (the first of ``keys`` present)."""
    frame = to_frame(metrics)
    key = _first(frame, keys)
    if key is None:
        return empty_figure(title)
    data = _numeric(frame, key)
    if data.empty:
        return empty_figure(title)
    fig = go.Figure(go.Scatter(x=data["step"], y=data["value"], mode="lines+markers", name=key))
    return _layout(fig, title, "step", y_title or key)


def loss_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, LOSS, "Loss")


def kl_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, KL, "KL to reference")


def length_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, LENGTH, "Response length", "tokens")


def clip_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, CLIP, "Clip ratio")


def reward_distribution_figure(metrics: Any, last_steps: int = 10) -> go.Figure:
    """Violin per step of the raw group rewards over the last ``last_steps`` steps."""
    frame = to_frame(metrics)
    key = _first(frame, RAW_REWARDS)
    if key is None:
        return empty_figure("Reward distribution")
    fig = go.Figure()
    rows = frame[["step", key]].dropna().tail(last_steps)
    for step, values in zip(rows["step"], rows[key]):
        numbers = [float(v) for v in _flatten(values)]
        if numbers:
            fig.add_trace(go.Violin(y=numbers, name=f"step {int(step) if pd.notna(step) else '?'}",
                                    box_visible=True, meanline_visible=True, points="all"))
    if not fig.data:
        return empty_figure("Reward distribution")
    fig.update_layout(showlegend=False)
    return _layout(fig, "Reward distribution (raw group rewards)", "step", "reward")


def overlay_figure(runs: Mapping[str, Any]) -> go.Figure:
    """Mean-reward curves of several runs on one chart: ``{run_id: metrics}``."""
    fig = go.Figure()
    for run_id, metrics in runs.items():
        frame = to_frame(metrics)
        key = _first(frame, REWARD_MEAN)
        if key is None:
            continue
        data = _numeric(frame, key)
        fig.add_trace(go.Scatter(x=data["step"], y=data["value"], mode="lines", name=str(run_id)))
    if not fig.data:
        return empty_figure("Reward by run", "no runs with reward data selected")
    return _layout(fig, "Reward by run", "step", "reward (mean)")


def all_figures(metrics: Any) -> dict[str, go.Figure]:
    """Every per-run figure, keyed by a short name (the Train tab shows them in a grid)."""
    frame = to_frame(metrics)
    return {
        "reward": reward_figure(frame),
        "distribution": reward_distribution_figure(frame),
        "loss": loss_figure(frame),
        "kl": kl_figure(frame),
        "length": length_figure(frame),
        "clip": clip_figure(frame),
    }


# --------------------------------------------------------------------------- helpers


def _first(frame: pd.DataFrame, keys: Iterable[str]) -> str | None:
    for key in keys:
        if key in frame.columns and frame[key].notna().any():
            return key
    return None


def _is_numeric(column: pd.Series) -> bool:
    return pd.to_numeric(column, errors="coerce").notna().any()


def _numeric(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    data = pd.DataFrame({"step": frame["step"], "value": pd.to_numeric(frame[key], errors="coerce")})
    return data.dropna()


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        out: list[Any] = []
        for value in values:
            out.extend(_flatten(value))
        return out
    try:
        number = float(values)
    except (TypeError, ValueError):
        return []
    return [number] if math.isfinite(number) else []


def _layout(fig: go.Figure, title: str, x_title: str = "", y_title: str = "") -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", margin={"l": 40, "r": 10, "t": 40, "b": 40},
                      height=320, legend={"orientation": "h", "y": -0.2})
    if x_title:
        fig.update_xaxes(title=x_title)
    if y_title:
        fig.update_yaxes(title=y_title)
    return fig


# --------------------------------------------------------------------------- hardware (hw/... metrics)

HW_KEY = re.compile(r"hw/rank(\d+)/(\w+)")


def hardware_figure(metrics: Any) -> go.Figure:
    """Memory per rank (GPU allocated/reserved when logged, else RSS) and utilisation (GPU util,
    else CPU %) from the trainer's ``hw/rank{r}/...`` metrics; whatever subset is present is drawn."""
    frame = to_frame(metrics)
    ranks: dict[int, set[str]] = {}
    for column in frame.columns:
        match = HW_KEY.fullmatch(str(column)) if isinstance(column, str) else None
        if match and _is_numeric(frame[column]):
            ranks.setdefault(int(match.group(1)), set()).add(match.group(2))
    if not ranks:
        return empty_figure("Hardware", "no hardware metrics (hw/…) in this run yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("memory per rank (GiB)", "utilisation (%)"))
    for rank in sorted(ranks):
        names = ranks[rank]
        memory = ["gpu_allocated_gib", "gpu_reserved_gib"] if "gpu_allocated_gib" in names else ["rss_gib"]
        for name in memory + ["gpu_util_percent" if "gpu_util_percent" in names else "cpu_percent"]:
            if name not in names:
                continue
            data = _numeric(frame, f"hw/rank{rank}/{name}")
            fig.add_trace(go.Scatter(x=data["step"], y=data["value"], mode="lines+markers", name=f"rank {rank} {name}",
                                     line={"dash": "dot" if name == "gpu_reserved_gib" else "solid"}),
                          row=1, col=1 if name.endswith("_gib") else 2)
    peak = _first(frame, ("hw/peak_gib",))
    title = "Hardware"
    if peak is not None:
        values = _numeric(frame, peak)["value"]
        if not values.empty:
            title += f" · peak {values.max():.2f} GiB"
    fig.update_xaxes(title="step")
    return _layout(fig, title)
