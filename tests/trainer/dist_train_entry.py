"""``memfactory`` CLI entry for the multi-process test, plus one test-only reward.

``accelerate launch ... tests/trainer/dist_train_entry.py train PRESET ...`` runs exactly
``python -m memfactory train PRESET ...`` (the same ``memfactory.cli.main``), with a reward that
gives the tiny random model a learning signal: the share of vowels in the answer, but only for
samples with an even index (odd ones score a constant, so their groups are skipped). That makes
some steps leave one rank with nothing to train on while the other has work.

``... dist_train_entry.py gradient-check DIR`` instead compares, on every rank, the gradient that
``GRPOTrainer.policy_update`` leaves under DDP (each rank holding an uneven slice of a fixed
batch) with the single-process gradient of the whole batch, for each loss type. Under FSDP
the sharded gradients are gathered first.
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


def gradient_check(out: str) -> int:
    """Each rank: the single-process gradient of the WHOLE batch (a plain copy of the current
    weights, no DDP/FSDP), then ``policy_update`` on this rank's uneven slice under DDP or FSDP;
    write the largest difference between the two."""
    import json

    import torch

    from memfactory.backends.sources import load_model_and_tokenizer
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.batching import pack_calls, token_logprobs
    from memfactory.trainer.grpo import grpo_loss
    from memfactory.trainer.loop import GRPOTrainer
    from memfactory.trainer.sharding import is_sharded, trainable_parameters
    from memfactory.types import ModelCall

    preset = load_preset(
        presets_dir() / "tiny_test.yaml",
        ["trainer.micro_batch_size=2", "trainer.max_grad_norm=1e9", "trainer.max_new_tokens=6"],
    )  # fmt: skip
    trainer = GRPOTrainer(preset)
    acc = trainer.accelerator
    gen = torch.Generator().manual_seed(7)
    calls = []
    for p, r in [(5, 6), (3, 2), (7, 4), (2, 5), (4, 1), (6, 3)]:
        prompt = torch.randint(3, 1900, (p,), generator=gen).tolist()
        response = torch.randint(3, 1900, (r,), generator=gen).tolist()
        calls.append(ModelCall(module="m", prompt_ids=prompt, response_ids=response, logprobs=[0.0] * r, text=""))
    advantages = [1.2, -0.7, 0.4, -1.1, 0.9, -0.3]
    mine = slice(0, 5) if acc.process_index == 0 else slice(5, 6)  # 3 micro-batches vs 1 (+2 idle passes)

    plain, _ = load_model_and_tokenizer(preset.model)
    batch = pack_calls(calls, pad_id=trainer.tokenizer.pad_token_id)
    result = {"sharded": is_sharded(trainer.policy)}
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        trainer.cfg = trainer.cfg.model_copy(update={"loss_type": loss_type})
        current = dict(trainable_parameters(trainer.policy))  # gathered under FSDP
        plain.load_state_dict(current, strict=False)
        named = [(name, p) for name, p in plain.named_parameters() if name in current]
        plain.train()
        logps = token_logprobs(plain, batch)
        loss, _ = grpo_loss(logps, logps.detach(), torch.tensor(advantages), batch.response_mask,
                            loss_type=loss_type, epsilon=0.2, max_completion_length=6)  # fmt: skip
        grads = torch.autograd.grad(loss, [p for _, p in named])
        reference = {name: grad for (name, _), grad in zip(named, grads)}
        # The update frees the gradients right after its optimizer step: read them just before it.
        seen = {}

        def before_step(_optimizer, _args, _kwargs, seen=seen):
            grads = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
            # DDP keeps its all-reduce buckets for the whole run; with gradient_as_bucket_view the
            # gradients are views into them (few storages), else copies (one storage each).
            storages = {g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads
                        if not hasattr(g, "full_tensor")}
            result["grad_storages"] = [len(storages), len(grads), sum(storages.values()),
                                       sum(g.numel() * g.element_size() for g in grads)]
            for name, param in trainer.policy.named_parameters():
                grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad  # a collective
                seen[name] = grad.detach().clone()

        handle = trainer.optimizer.optimizer.register_step_pre_hook(before_step)
        trainer.policy_update([(calls[mine], advantages[mine])])
        handle.remove()
        assert all(param.grad is None for param in trainer.policy.parameters())
        diff = 0.0
        for name, grad in seen.items():
            diff = max(diff, float((grad - reference[name]).abs().max()))
        result[loss_type] = {"max_diff": diff, "max_grad": max(float(g.abs().max()) for g in reference.values())}
    with open(f"{out}/grad-{acc.process_index}.json", "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["gradient-check"]:
        sys.exit(gradient_check(sys.argv[2]))
    from memfactory.cli import main

    sys.exit(main(sys.argv[1:]))
