"""``python tests/hardening/train_entry.py train PRESET ...`` = ``python -m memfactory train PRESET ...``
plus one test-only reward.

Why: the tiny random model scores 0 on every shipped reward, so its groups are all skipped and no
step changes the weights; then "the resume continued from the right checkpoint" could not be
seen in the numbers. ``test_vowel_share`` (tests/vowel_reward.py: the share of vowels among the
answer's letters) varies within a group, so every step trains and a resume from the wrong state
shows up as different losses and weights. Everything else is the real CLI (``memfactory.cli.main``).
"""

from __future__ import annotations

import sys

from memfactory.cli import main
from memfactory.registry import register
from tests.vowel_reward import VowelShare  # importable: hardening_util puts the project root on PYTHONPATH


@register("reward", "test_vowel_share", description="test only: share of vowels among the answer's letters")
class TestVowelShare(VowelShare):
    name = "test_vowel_share"


if __name__ == "__main__":
    sys.exit(main())
