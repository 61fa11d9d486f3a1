"""Long-term memory environment: LoCoMo-format conversations, one Sample per QA item.

The agent (``memory_r1``, ``rmm``) replays the conversation's sessions (``Sample.meta["sessions"]``)
into a fresh memory bank, then answers the question. Answer rewards are the usual ones (``em``,
``f1``, ``llm_judge``, ``format`` from envs/rewards.py); this file adds two memory rewards:

* ``memory_format`` — MemFactory's memory-bank reward: 0.5 x the share of extraction responses
  that were parseable JSON + 0.5 x the share of update responses that were (an episode with no
  update call gets nothing for that half, so writing ``[]`` everywhere is not a perfect score);
* ``citation`` — RMM's bonus: the share of the reranker's selected memories that the answer cites.

Splits: ``train`` / ``test`` (a seeded hold-out of the ``data`` QA items), or an eval-set name
(``locomo_synth``, ``locomo10``) looked up in ``data_dir`` then ``assets/data``, a file path or a
``synthetic://locomo?n=..`` URI. ``Sample.meta["category"]`` (1 multi-hop, 2 temporal,
3 open-domain, 4 single-hop, 5 adversarial) lets ``memfactory eval`` report per-category scores.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memfactory.data.sources import LOCOMO, File, Synthetic, load_locomo
from memfactory.envs.base import Reward
from memfactory.envs.held_out import HeldOutEnv
from memfactory.registry import register
from memfactory.types import Sample, Trajectory


class MemoryBankOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        "locomo_synth",
        description="LoCoMo-format source: a .json file, a set name (locomo_synth, locomo10) or synthetic://locomo?n=8&seed=0",
    )
    eval: list[str] = Field(default_factory=list, description="Eval set names or files, e.g. locomo_synth, locomo10")
    data_dir: str = Field("data", description="Folder searched for named sets (then assets/data)")
    exclude_categories: list[int] = Field(
        default_factory=lambda: [5],
        description="QA categories left out (5 = adversarial, excluded by LoCoMo's usual protocol)",
    )
    eval_size: int | None = Field(None, ge=1, description="Use at most this many samples of each eval set")
    train_size: int | None = Field(
        None, ge=1, description="Use at most this many training QA items (after the held-out split)"
    )
    test_fraction: float = Field(0.125, ge=0.0, lt=1.0, description="Share of the QA items held out as 'test'")
    seed: int = Field(0, description="Seed of the train/test split")


@register(
    "env",
    "memory_bank",
    description="Long-term memory QA over LoCoMo-format conversations (Memory-R1, RMM); per-category scores",
    config=MemoryBankOptions,
)
class MemoryBankEnv(HeldOutEnv):
    options: MemoryBankOptions
    options_model = MemoryBankOptions
    data_family = LOCOMO

    def _read(self, source: Synthetic | File) -> list[Sample]:
        return load_locomo(source, exclude_categories=self.options.exclude_categories)


# --------------------------------------------------------------------------- memory rewards


def _share(counters: dict[str, float], part: str, total: str) -> float:
    calls = counters.get(total, 0.0)
    return min(1.0, counters.get(part, 0.0) / calls) if calls > 0 else 0.0


@register(
    "reward",
    "memory_format",
    description="MemFactory's memory-bank reward: 0.5 x parseable extraction JSON + 0.5 x valid update JSON",
)
class MemoryFormat(Reward):
    name = "memory_format"

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        return [
            0.5 * _share(t.counters, "extract_parsed", "extract_calls")
            + 0.5 * _share(t.counters, "update_parsed", "update_calls")
            for t in trajectories
        ]


@register(
    "reward",
    "citation",
    description="RMM's citation bonus: share of the reranker's selected memories that the answer cites",
)
class CitationBonus(Reward):
    name = "citation"

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        return [_share(t.counters, "rerank_cited", "rerank_selected") for t in trajectories]
