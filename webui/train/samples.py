"""Browsing a run's sample trajectories (``samples.jsonl``) as markdown, without Gradio."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from memfactory.tracking import metric_keys as keys


def sample_steps(samples: list[dict[str, Any]]) -> list[int]:
    """Steps whose samples.jsonl record holds whole trajectories, newest first."""
    steps = []
    for record in samples:
        step = record.get(keys.STEP)
        if record.get(keys.TRAJECTORIES) and isinstance(step, int) and step not in steps:
            steps.append(step)
    return sorted(steps, reverse=True)


def trajectories_at(samples: list[dict[str, Any]], step: int | None) -> list[dict[str, Any]]:
    """The trajectories written at ``step`` (the newest step with any when ``step`` is None)."""
    steps = sample_steps(samples)
    if not steps:
        return []
    wanted = steps[0] if step is None else step
    for record in reversed(samples):  # after a resume a step may appear twice: the last one counts
        if record.get(keys.STEP) == wanted and record.get(keys.TRAJECTORIES):
            return [s for s in record[keys.TRAJECTORIES] if isinstance(s, dict)]
    return []


def _short(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _block(text: Any, limit: int = 1500) -> str:
    return "```text\n" + _short(text, limit).replace("```", "ʼʼʼ") + "\n```"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def sample_markdown(sample: dict[str, Any] | None, *, step: int | None = None, index: int = 0, count: int = 0) -> str:
    """One trajectory: question, gold, each memory step of its trace, the answer and the reward parts."""
    if not sample:
        return "_No sample trajectories yet (they are written every `trainer.sample_every` steps)._"
    head = f"### Step {step} · trajectory {index + 1} of {count}" if step is not None else "### Trajectory"
    rewards = sample.get("rewards") or {}
    parts = ", ".join(f"{k} = {_number(v)}" for k, v in rewards.items()) if isinstance(rewards, dict) else ""
    lines = [head, f"**Reward** {_number(sample.get('reward'))}" + (f" ({parts})" if parts else "")
             + (f" · advantage {_number(sample.get('advantage'))}" if sample.get("advantage") is not None else "")]
    if sample.get("question") is not None:
        lines += ["**Question**", _block(sample["question"])]
    if sample.get("gold") is not None:
        gold = sample["gold"]
        lines.append("**Gold** " + ", ".join(f"`{_short(g, 200)}`" for g in (gold if isinstance(gold, list) else [gold])))
    trace = [entry for entry in sample.get("trace") or [] if isinstance(entry, dict)]
    if trace:
        lines.append(f"**Memory steps** ({len(trace)})")
        for n, entry in enumerate(trace, 1):
            label = entry.get("kind") or "step"
            where = entry.get("step", n - 1)
            extras = {k: v for k, v in entry.items() if k not in ("kind", "step", "memory", "answer", "memories")}
            lines.append(f"{n}. *{label} {where}*" + (" — " + ", ".join(f"{k}: {_short(v, 200)}"
                                                                       for k, v in extras.items()) if extras else ""))
            for key in ("memory", "memories", "answer"):
                if entry.get(key) not in (None, "", []):
                    lines.append(f"   {key}:\n\n" + _block(entry[key], 1200))
    lines += ["**Answer**", _block(sample.get("answer", ""))]
    calls = [c for c in sample.get("calls") or [] if isinstance(c, dict)]
    if calls:
        lines.append(f"<details><summary>Model calls ({len(calls)})</summary>\n")
        for call in calls:
            lines.append(f"- `{call.get('module', '?')}` ({call.get('tokens', '?')} tokens)\n\n"
                         + _block(call.get("response", ""), 800))
        lines.append("</details>")
    return "\n\n".join(lines)


@dataclass
class SampleView:
    steps: list[int] = field(default_factory=list)
    step: int | None = None
    index: int = 0
    count: int = 0
    markdown: str = ""


def browse_samples(samples: list[dict[str, Any]], step: Any = None, index: Any = 1) -> SampleView:
    """The trajectory to show for a step choice (``None``/"latest" = newest) and a 1-based index."""
    steps = sample_steps(samples)
    try:
        wanted = None if step in (None, "", "latest") else int(step)
    except (TypeError, ValueError):
        wanted = None
    if wanted is not None and wanted not in steps:
        wanted = None
    chosen = wanted if wanted is not None else (steps[0] if steps else None)
    trajectories = trajectories_at(samples, chosen)
    try:
        i = int(index) - 1
    except (TypeError, ValueError):
        i = 0
    i = max(0, min(i, len(trajectories) - 1)) if trajectories else 0
    sample = trajectories[i] if trajectories else None
    return SampleView(steps, chosen, i, len(trajectories), sample_markdown(sample, step=chosen, index=i,
                                                                            count=len(trajectories)))
