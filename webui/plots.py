"""Plotly figures of a run's metrics (one row per optimizer step, as in ``metrics.jsonl``).

Every figure reads the names the trainer writes, from :mod:`memfactory.tracking.metric_keys`.
Missing data never raises: the figure says "no data yet".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memfactory.tracking import metric_keys as keys


def to_frame(metrics: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a list of dicts or None, with a ``step`` column."""
    if metrics is None:
        return pd.DataFrame()
    frame = metrics.copy() if isinstance(metrics, pd.DataFrame) else pd.DataFrame(list(metrics))
    if frame.empty:
        return frame
    has_step = _has(frame, keys.STEP)
    frame[keys.STEP] = pd.to_numeric(frame[keys.STEP], errors="coerce") if has_step else range(len(frame))
    return frame.sort_values(keys.STEP, kind="stable").reset_index(drop=True)


def empty_figure(title: str = "", message: str = "no data yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 16})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def reward_figure(metrics: Any) -> go.Figure:
    """Mean reward with a ±1 std band, plus every named reward part (``reward/<name>``)."""
    frame = to_frame(metrics)
    has_mean = _has(frame, keys.REWARD_MEAN)
    parts = reward_parts(frame)
    if not has_mean and not parts:
        return empty_figure("Reward")
    fig = go.Figure()
    if has_mean:
        data = _numeric(frame, keys.REWARD_MEAN)
        if _has(frame, keys.REWARD_STD):
            band = data.assign(std=pd.to_numeric(frame.loc[data.index, keys.REWARD_STD], errors="coerce").fillna(0.0))
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
    """Columns like ``reward/sub_em`` (named reward parts), not the mean/std/max/min summaries."""
    return [c for c in frame.columns if isinstance(c, str) and c.startswith(keys.REWARD_PREFIX)
            and c not in keys.REWARD_SUMMARIES and _is_numeric(frame[c])]


def scalar_figure(metrics: Any, key: str, title: str, y_title: str = "") -> go.Figure:
    """One metric over steps."""
    frame = to_frame(metrics)
    if not _has(frame, key):
        return empty_figure(title)
    data = _numeric(frame, key)
    if data.empty:
        return empty_figure(title)
    fig = go.Figure(go.Scatter(x=data["step"], y=data["value"], mode="lines+markers", name=key))
    return _layout(fig, title, "step", y_title or key)


def loss_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, keys.LOSS, "Loss")


def kl_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, keys.KL, "KL to reference")


def length_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, keys.RESPONSE_LENGTH_MEAN, "Response length", "tokens")


def clip_figure(metrics: Any) -> go.Figure:
    return scalar_figure(metrics, keys.CLIP_RATIO, "Clip ratio")


def reward_distribution_figure(metrics: Any, last_steps: int = 10) -> go.Figure:
    """Violin per step of the raw group rewards (samples.jsonl) over the last ``last_steps`` steps."""
    frame = to_frame(metrics)
    if not _has(frame, keys.GROUP_REWARDS):
        return empty_figure("Reward distribution")
    fig = go.Figure()
    rows = frame[[keys.STEP, keys.GROUP_REWARDS]].dropna().tail(last_steps)
    for step, values in zip(rows[keys.STEP], rows[keys.GROUP_REWARDS]):
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
        if not _has(frame, keys.REWARD_MEAN):
            continue
        data = _numeric(frame, keys.REWARD_MEAN)
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


def _has(frame: pd.DataFrame, key: str) -> bool:
    """Whether ``frame`` has a column ``key`` with any value in it."""
    return key in frame.columns and bool(frame[key].notna().any())


def _is_numeric(column: pd.Series) -> bool:
    return pd.to_numeric(column, errors="coerce").notna().any()


def _numeric(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    data = pd.DataFrame({"step": frame[keys.STEP], "value": pd.to_numeric(frame[key], errors="coerce")})
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

def hardware_figure(metrics: Any) -> go.Figure:
    """Memory per rank (GPU allocated/reserved when logged, else RSS) and utilisation (GPU util,
    else CPU %) from the trainer's ``hw/rank{r}/...`` metrics; whatever subset is present is drawn."""
    frame = to_frame(metrics)
    ranks: dict[int, set[str]] = {}
    for column in frame.columns:
        match = keys.HW_RANK_KEY.fullmatch(column) if isinstance(column, str) else None
        if match and _is_numeric(frame[column]):
            ranks.setdefault(int(match.group(1)), set()).add(match.group(2))
    if not ranks:
        return empty_figure("Hardware", "no hardware metrics (hw/…) in this run yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("memory per rank (GiB)", "utilisation (%)"))
    for rank in sorted(ranks):
        names = ranks[rank]
        gpu = keys.HW_GPU_ALLOCATED in names
        memory = [keys.HW_GPU_ALLOCATED, keys.HW_GPU_RESERVED] if gpu else [keys.HW_RSS]
        for name in memory + [keys.HW_GPU_UTIL if keys.HW_GPU_UTIL in names else keys.HW_CPU]:
            if name not in names:
                continue
            data = _numeric(frame, keys.hw_key(rank, name))
            fig.add_trace(go.Scatter(x=data["step"], y=data["value"], mode="lines+markers", name=f"rank {rank} {name}",
                                     line={"dash": "dot" if name == keys.HW_GPU_RESERVED else "solid"}),
                          row=1, col=1 if name in memory else 2)
    title = "Hardware"
    if _has(frame, keys.HW_PEAK_GIB):
        values = _numeric(frame, keys.HW_PEAK_GIB)["value"]
        if not values.empty:
            title += f" · peak {values.max():.2f} GiB"
    fig.update_xaxes(title="step")
    return _layout(fig, title)
