"""The update scores old and reference log-probs without dropout, and gives the policy back in training mode.

Dropout in those no-grad forwards would make the old and reference log-probs noise samples (TRL and
verl score them with dropout off); the grad pass itself keeps the policy's own training mode.
"""

from __future__ import annotations

import torch

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer import update
from memfactory.trainer.loop import GRPOTrainer
from tests.vowel_reward import VowelShare


def with_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Give every attention layer dropout ``p`` (active in training mode); returns how many."""
    layers = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    for m in layers:
        m.attention_dropout = p
    return len(layers)


def test_old_and_reference_log_probs_are_scored_without_dropout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", [
        "trainer.beta=0.1", "trainer.num_iterations=2", "trainer.stop=[]", "trainer.skip_equal_groups=false"])
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"vowels": VowelShare()}, {"vowels": 1.0}
    assert with_attention_dropout(trainer.policy, 0.5) > 0 and with_attention_dropout(trainer.reference, 0.5) > 0
    calls, advantages, _ = trainer.rollout(trainer.batch_for_step(1, 0))
    # The grad pass's forward in training mode really is noisy with this dropout.
    batch = update.pack_calls(calls, trainer.tokenizer.pad_token_id)
    trainer.policy.train()
    with torch.no_grad():
        assert not torch.equal(update.token_logprobs(trainer.policy, batch), update.token_logprobs(trainer.policy, batch))

    scoring = update.token_logprobs
    seen: list[tuple[bool, bool]] = []  # (grad enabled, any module training) per scoring call

    def spy(model, batch, **kwargs):
        training = any(m.training for m in model.modules())
        seen.append((torch.is_grad_enabled(), training))
        out = scoring(model, batch, **kwargs)
        if not torch.is_grad_enabled():  # without dropout the same forward gives the same log-probs
            assert torch.equal(out, scoring(model, batch, **kwargs))
        return out

    monkeypatch.setattr(update, "token_logprobs", spy)
    stats = trainer.policy_update([(calls, advantages)])
    assert stats["grad_norm"] > 0
    no_grad = [training for grad, training in seen if not grad]
    assert len(no_grad) == 2 and not any(no_grad)  # old (policy) and reference, both in eval mode
    assert all(training for grad, training in seen if grad)  # the grad pass trains as configured
    assert all(m.training for m in trainer.policy.modules())  # training mode given back
    assert not any(m.training for m in trainer.reference.modules())  # the frozen reference stays in eval
