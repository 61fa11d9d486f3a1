"""Log-probs of the hf backend, read off the forwards that generation runs anyway.

* Sampled tokens: a logits processor keeps one ``[B, V]`` log-softmax per step (memory does not
  grow with the response length or vocabulary the way ``output_logits`` does) and gathers the
  sampled token's value one step later; with ``top > 0`` it also keeps that step's ``top`` most
  likely tokens.
* Prompt tokens (``SamplingParams.prompt_logprobs``): the prefill that builds the KV cache the
  sampled tokens continue from runs with all its logits kept, and each prompt token's log-prob
  (and top ``k``) is gathered from the position before it.

Both are the temperature-scaled ``log_softmax(logits / T)`` (T = 1 when greedy), before top-p /
top-k truncation: the distribution the token was drawn from, which the trainer recomputes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memfactory.types import TopLogprobs

if TYPE_CHECKING:
    import torch


class LogprobRecorder:
    """Logits processor that records log p(token) of each sampled token, one step behind.

    At step t it sees the token sampled at step t-1 as ``input_ids[:, -1]`` and gathers its
    log-prob from the distribution it stored then; :meth:`finish` gathers the last one.
    """

    def __init__(self, temperature: float, top: int = 0):
        self.temperature = temperature
        self.top = top
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []
        self.tops: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: values, ids [B, top]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.top:
            self.tops.append(self.previous.topk(self.top, dim=-1))
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
            self.previous = None
        if not self.steps:
            return torch.zeros(last_tokens.shape[0], 0)
        return torch.stack(self.steps, dim=1)

    def top_lists(self, row: int, length: int) -> list[TopLogprobs]:
        """Row ``row``'s top tokens at its first ``length`` positions."""
        return [_pairs(values[row], ids[row]) for values, ids in self.tops[:length]]


def _pairs(values: torch.Tensor, ids: torch.Tensor) -> TopLogprobs:
    return list(zip(ids.tolist(), values.tolist()))


def prompt_scores(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, top: int
) -> list[tuple[list[float | None], list[TopLogprobs]]]:
    """Each row's prompt-token log-probs and top ``top`` lists from a prefill's logits.

    ``logits`` ``[B, P-1, V]`` are the prefill's over ``input_ids[:, :-1]`` (left-padded ``[B, P]``):
    position j predicts token j+1, so every real token but a row's first gets a value; the first
    gets None and an empty list. One row's log-softmax at a time bounds the memory to ``[P, V]``.
    """
    import torch

    out = []
    for row in range(input_ids.shape[0]):
        start = int(input_ids.shape[1] - attention_mask[row].sum())  # the row's first real token
        if start >= input_ids.shape[1] - 1:
            out.append(([None] * (input_ids.shape[1] - start), [[] for _ in range(input_ids.shape[1] - start)]))
            continue
        logp = torch.log_softmax(logits[row, start:].float() / temperature, dim=-1)  # predicts start+1 ..
        targets = input_ids[row, start + 1 :].to(logp.device)
        values: list[float | None] = [None, *logp.gather(1, targets[:, None]).squeeze(1).tolist()]
        tops: list[TopLogprobs] = [[]]
        if top:
            best = logp.topk(top, dim=-1)
            tops += [_pairs(v, i) for v, i in zip(best.values, best.indices)]
        else:
            tops += [[] for _ in range(len(targets))]
        out.append((values, tops))
    return out
