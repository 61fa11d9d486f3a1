"""``python tests/hardening/train_entry.py train PRESET ...`` = ``python -m memfactory train PRESET ...``
plus one test-only reward.

Why: the tiny random model scores 0 on every shipped reward, so its groups are all skipped and no
step changes the weights; then "the resume continued from the right checkpoint" could not be
seen in the numbers. ``test_vowel_share`` (the share of vowels among the answer's letters) varies
within a group, so every step trains and a resume from the wrong state shows up as different
losses and weights. Everything else is the real CLI (``memfactory.cli.main``).
"""

from __future__ import annotations

import sys

from memfactory.envs.base import Reward
from memfactory.registry import register
from memfactory.types import Trajectory


@register("reward", "test_vowel_share", description="test only: share of vowels among the answer's letters")
class VowelShare(Reward):
    name = "test_vowel_share"

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        out = []
        for t in trajectories:
            letters = [c for c in t.answer.lower() if c.isalpha()]
            out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
        return out


if __name__ == "__main__":
    from memfactory.cli import main

    sys.exit(main())
