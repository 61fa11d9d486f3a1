"""``memfactory`` CLI entry for the multi-process test, plus one test-only reward.

``accelerate launch ... tests/trainer/dist_train_entry.py train PRESET ...`` runs exactly
``python -m memfactory train PRESET ...`` (the same ``memfactory.cli.main``), with a reward that
gives the tiny random model a learning signal: the share of vowels in the answer, but only for
samples with an even index (odd ones score a constant, so their groups are skipped). That makes
some steps leave one rank with nothing to train on while the other has work.
"""

import sys

from memfactory.envs.base import Reward
from memfactory.registry import register


@register("reward", "test_even_vowels", description="test only: vowel share on even samples, 0.5 on odd ones")
class EvenVowels(Reward):
    name = "test_even_vowels"

    def score(self, trajectories):
        out = []
        for t in trajectories:
            if int(t.sample.id.rsplit("-", 1)[-1]) % 2:
                out.append(0.5)
                continue
            letters = [c for c in t.answer.lower() if c.isalpha()]
            out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
        return out


if __name__ == "__main__":
    from memfactory.cli import main

    sys.exit(main(sys.argv[1:]))
