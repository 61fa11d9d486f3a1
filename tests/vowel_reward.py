"""The tests' continuous reward: the share of vowels in the answer.

Every sample scores differently, so a tiny random model's GRPO groups nearly always carry signal
(a 0/1 reward would leave most groups equal and skipped).
"""

from __future__ import annotations

from memfactory.envs.base import Reward


class VowelShare(Reward):
    name = "vowels"

    def score(self, trajectories):
        out = []
        for t in trajectories:
            letters = [c for c in t.answer.lower() if c.isalpha()]
            out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
        return out
