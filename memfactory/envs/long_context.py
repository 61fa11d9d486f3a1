"""Long-context QA environment: MemAgent/RULER files or synthetic sets in, answer rewards out.

Splits: ``train`` (the data source minus a held-out slice), ``test`` (that slice, never trained
on), or an eval-set name such as ``eval_50`` / ``eval_fwe_16384`` looked up in ``data_dir`` and
then in the shipped ``assets/data`` sets. A ``synthetic://`` URI or a file path also works as a
split name, so the eval command can score any source (``memfactory.data.sources`` resolves them). Rewards come from the base class's
``score`` (weighted parts named in the preset).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memfactory.data.sources import LONG_CONTEXT, File, Synthetic, load_samples
from memfactory.envs.held_out import HeldOutEnv
from memfactory.registry import register
from memfactory.types import Sample


class LongContextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        "synthetic://docqa?n=64&seed=0",
        description="Training source: a .json/.jsonl/.parquet file, or synthetic://docqa?n=64&seed=0, "
        "synthetic://hotpotqa?n=32&docs=20, synthetic://fwe?n=16&length=2048",
    )
    eval: list[str] = Field(
        default_factory=list, description="Eval set names, e.g. eval_50, eval_fwe_16384, eval_docqa"
    )
    data_dir: str = Field("data", description="Folder holding downloaded eval sets (then assets/data is searched)")
    eval_size: int | None = Field(None, ge=1, description="Use at most this many samples of each eval set")
    train_size: int | None = Field(
        None, ge=1, description="Use at most this many training samples (after the held-out split)"
    )
    test_fraction: float = Field(0.125, ge=0.0, lt=1.0, description="Share of the training source held out as 'test'")
    seed: int = Field(0, description="Seed of the train/test split")


@register(
    "env",
    "long_context",
    description="Long-context QA (MemAgent HotpotQA / RULER files or synthetic sets); answer rewards",
    config=LongContextOptions,
)
class LongContextEnv(HeldOutEnv):
    options: LongContextOptions
    options_model = LongContextOptions
    data_family = LONG_CONTEXT

    def _read(self, source: Synthetic | File) -> list[Sample]:
        return load_samples(source)
