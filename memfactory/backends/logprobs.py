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

    def stacked_tops(self) -> list[torch.Tensor]:
        """The kept top lists as ``[values, ids]``, each ``[steps, B, top]`` (empty when none kept), so
        they travel to the host with the sampled tokens (:func:`to_host`)."""
        import torch

        if not self.tops:
            return []
        return [torch.stack([values for values, _ in self.tops]), torch.stack([ids for _, ids in self.tops])]

    def top_lists(self, row: int, length: int) -> list[TopLogprobs]:
        """Row ``row``'s top tokens at its first ``length`` positions."""
        return [_pairs(values[row], ids[row]) for values, ids in self.tops[:length]]


def to_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` (on one device) on the host in a single device-to-host copy: one sync ends a
    generation instead of one per tensor, row or step. float64 holds every value exactly: token ids
    (below 2^53) and float32 log-probs, infinities included; each comes back in its own shape as
    int64 (integer tensors) or float32."""
    import torch

    if not tensors:
        return []
    host = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu()
    out, start = [], 0
    for t in tensors:
        part = host[start : start + t.numel()].reshape(t.shape)
        out.append(part.to(torch.float32) if t.is_floating_point() else part.to(torch.long))
        start += t.numel()
    return out


def _pairs(values: torch.Tensor, ids: torch.Tensor) -> TopLogprobs:
    return list(zip(ids.tolist(), values.tolist()))


def prompt_scores(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, top: int
) -> list[tuple[list[float | None], list[TopLogprobs]]]:
    """Each row's prompt-token log-probs and top ``top`` lists from a prefill's logits.

    ``logits`` ``[B, P-1, V]`` are the prefill's over ``input_ids[:, :-1]`` (left-padded ``[B, P]``):
    position j predicts token j+1, so every real token but a row's first gets a value; the first
    gets None and an empty list. One row's log-softmax at a time bounds the memory to ``[P, V]``;
    every row's values come to the host in one copy (:func:`to_host`).
    """
    import torch

    width = input_ids.shape[1]
    starts = [int(width - attention_mask[row].sum()) for row in range(input_ids.shape[0])]  # first real tokens
    scored = [row for row, start in enumerate(starts) if start < width - 1]
    device: list[torch.Tensor] = []
    for row in scored:
        logp = torch.log_softmax(logits[row, starts[row]:].float() / temperature, dim=-1)  # predicts start+1 ..
        targets = input_ids[row, starts[row] + 1 :].to(logp.device)
        device.append(logp.gather(1, targets[:, None]).squeeze(1))
        if top:
            best = logp.topk(top, dim=-1)
            device += [best.values, best.indices]
    host = iter(to_host(*device))
    out: dict[int, tuple[list[float | None], list[TopLogprobs]]] = {}
    for row in scored:
        values = next(host)
        tops: list[TopLogprobs] = [[]]
        if top:
            best_values, best_ids = next(host), next(host)
            tops += [_pairs(v, i) for v, i in zip(best_values, best_ids)]
        else:
            tops += [[] for _ in range(len(values))]
        out[row] = ([None, *values.tolist()], tops)
    return [out.get(row, ([None] * (width - start), [[] for _ in range(width - start)])) for row, start in enumerate(starts)]
