"""Our GRPO numbers against TRL 1.16's own code, on the same inputs.

A real ``trl.GRPOTrainer`` is built around a tiny random Qwen3 saved to a temporary folder (no
network). Its ``_compute_loss`` — TRL's actual loss code, including its own forward pass for the
log-probs, its normalisations, KL and logged clip statistics — is then called on a batch packed by
``pack_calls``, and compared with ``token_logprobs`` + ``grpo_loss`` on the same model: the loss
value, the gradients it leaves on every weight, and the metrics TRL records. The advantages are
compared with those TRL computes in ``_generate_and_score_completions`` from a real generation
step with known rewards.

The only state set by hand is ``current_gradient_accumulation_steps``, which TRL's training loop
assigns per step (we call the loss without running that loop).
"""

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.grpo import group_advantages, grpo_loss
from memfactory.types import ModelCall

PAD, EOS = 0, 2
MAX_COMPLETION = 6
GRAD_ACCUM = 2
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny_qwen3")
    vocab = {f"t{i}": i for i in range(128)}
    vocab["<pad>"] = PAD
    del vocab[f"t{PAD}"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token=f"t{EOS}", unk_token="t1"
    )
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    transformers.Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), tokenizer


def make_trainer(model_dir, tmp_path, *, loss_type, beta, rewards=None, scale_rewards="group", kl_bias_correction=True):
    folder, tokenizer = model_dir
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=GRAD_ACCUM,
        max_completion_length=MAX_COMPLETION,
        temperature=TEMPERATURE,
        loss_type=loss_type,
        beta=beta,
        epsilon=0.2,
        epsilon_high=0.28,
        scale_rewards=scale_rewards,
        use_bias_correction_kl=kl_bias_correction,
        seed=0,
    )
    queue = list(rewards or [])

    def reward(completions, **kwargs):
        return [queue.pop(0) if queue else 0.0 for _ in completions]

    dataset = datasets.Dataset.from_dict({"prompt": ["t5 t6 t7", "t9 t10"] * 4})
    trainer = trl.GRPOTrainer(
        model=folder, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.model.train()  # dropout is 0 in this config, so train mode is deterministic
    trainer.current_gradient_accumulation_steps = GRAD_ACCUM  # set per step by the HF training loop
    return trainer


def make_calls():
    """Eight calls, varied prompt and response lengths (1..6 tokens, one empty response)."""
    gen = torch.Generator().manual_seed(1)
    calls = []
    for i, (p, r) in enumerate([(3, 6), (1, 2), (5, 4), (2, 0), (4, 5), (2, 3), (3, 1), (5, 6)]):
        prompt = torch.randint(3, 128, (p,), generator=gen).tolist()
        response = torch.randint(3, 128, (r,), generator=gen).tolist()
        calls.append(ModelCall(module="m", prompt_ids=prompt, response_ids=response, logprobs=[0.0] * r, text=f"c{i}"))
    return calls


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


IS_CAP = 1.5  # low enough that some of the test's engine ratios (up to ~e^0.6) are truncated


def trl_token_truncate_ratio(old, sampling, mask, cap):
    """TRL 1.16's vLLM importance-sampling ratio in its ``token_truncate`` mode, as written in
    ``GRPOTrainer._generate_and_score_completions`` (a vLLM engine is needed to reach that code)."""
    per_token_logps_diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    return torch.clamp(torch.exp(per_token_logps_diff), min=None, max=cap)


@pytest.mark.parametrize(
    "loss_type,beta,kl_bias_correction,importance",
    [(lt, 0.0, True, False) for lt in ("grpo", "dr_grpo", "dapo")]
    + [(lt, 0.04, True, False) for lt in ("grpo", "dr_grpo", "dapo")]
    + [("grpo", 0.04, False, False), ("dapo", 0.04, False, False)]
    + [("grpo", 0.04, True, True), ("dapo", 0.0, True, True)],
)
def test_loss_gradients_and_metrics_match_trl(model_dir, tmp_path, loss_type, beta, kl_bias_correction, importance):
    trainer = make_trainer(model_dir, tmp_path, loss_type=loss_type, beta=beta, kl_bias_correction=kl_bias_correction)
    model = trainer.model
    whole = pack_calls(make_calls(), PAD)  # the optimizer step's batch: two micro-batches of 4
    mb = whole.select(list(range(4)))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        current = token_logprobs(model, mb, temperature=TEMPERATURE)
    # old and reference log-probs off the current policy, so the ratio clips on both sides
    # alternating sign, magnitude 0.1..0.5: ratios from ~0.6 to ~1.65, some inside the clip range
    i, j = torch.arange(current.shape[0])[:, None], torch.arange(current.shape[1])[None, :]
    noise = (-1.0) ** (i + j) * (0.1 + 0.1 * ((i + 2 * j) % 5))
    old = (current + noise) * mb.response_mask
    ref = (current + (torch.rand(current.shape, generator=gen) - 0.5) * 0.6) * mb.response_mask
    advantages = torch.tensor([1.3, -0.8, -0.5, -1.1])
    num_items = whole.num_tokens

    # --- TRL: its own forward, loss and metrics
    P = mb.prompt_width
    inputs = {
        "prompt_ids": mb.input_ids[:, :P],
        "prompt_mask": mb.attention_mask[:, :P],
        "completion_ids": mb.input_ids[:, P:],
        "completion_mask": mb.attention_mask[:, P:],
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    # A separate sampling engine whose log-probs stray from the old policy's by up to +-0.6
    sampling = (old + (torch.rand(current.shape, generator=gen) - 0.5) * 1.2) * mb.response_mask
    if importance:
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        inputs["importance_sampling_ratio"] = trl_token_truncate_ratio(old, sampling, mb.response_mask, IS_CAP)
    with torch.no_grad():
        trl_logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, mb.input_ids, mb.attention_mask, mb.response_width
        )
    model.zero_grad()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = grads_of(model)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # --- ours
    model.zero_grad()
    logps = token_logprobs(model, mb, temperature=TEMPERATURE)
    loss, stats = grpo_loss(
        logps,
        old,
        advantages,
        mb.response_mask,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.28,
        beta=beta,
        ref_logps=ref if beta else None,
        max_completion_length=MAX_COMPLETION,
        num_items_in_batch=num_items,
        num_sequences_in_batch=whole.num_rows,
        kl_bias_correction=kl_bias_correction,
        sampling_logps=sampling if importance else None,
        importance_sampling_cap=IS_CAP,
    )
    loss.backward()
    our_grads = grads_of(model)
    if importance:  # the weights really change the loss, and some are truncated
        assert 0 < stats["is_weight/truncated_fraction"] < 1
        unweighted, _ = grpo_loss(logps.detach(), old, advantages, mb.response_mask, loss_type=loss_type, epsilon=0.2,
                                  epsilon_high=0.28, beta=beta, ref_logps=ref if beta else None,
                                  max_completion_length=MAX_COMPLETION, num_items_in_batch=num_items,
                                  num_sequences_in_batch=whole.num_rows, kl_bias_correction=kl_bias_correction)
        assert abs(unweighted.item() - loss.item()) > 1e-3

    m = mb.response_mask.bool()
    assert torch.allclose(logps.detach()[m], trl_logps[m], atol=1e-5)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    assert abs(loss.item()) > 1e-3
    assert our_grads.keys() == trl_grads.keys() and len(our_grads) > 0
    for name, g in our_grads.items():
        assert torch.allclose(g, trl_grads[name], rtol=1e-4, atol=1e-7), name
    # clipping really happened on both sides, and the statistics agree with TRL's log
    assert stats["clip_ratio/low_mean"] > 0 and stats["clip_ratio/high_mean"] > 0
    for key in [
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_max",
    ] + (["kl"] if beta else []):
        assert stats[key].item() == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key
    assert ("kl" in metrics) == bool(beta)


@pytest.mark.parametrize("scale", [True, False])
def test_advantages_match_trl_generation_step(model_dir, tmp_path, scale):
    # eight completions in two groups of four (TRL repeats each prompt num_generations times);
    # the second group is all equal: TRL gives it advantage 0, we give 0 and keep=False
    rewards = [1.0, 0.0, 0.5, 2.0, 0.3, 0.3, 0.3, 0.3]
    trainer = make_trainer(
        model_dir, tmp_path, loss_type="grpo", beta=0.0, rewards=rewards, scale_rewards="group" if scale else "none"
    )
    batch = [{"prompt": "t5 t6 t7"}] * 4 + [{"prompt": "t9 t10"}] * 4
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    ours, keep = group_advantages(rewards, [0, 0, 0, 0, 1, 1, 1, 1], scale=scale)
    assert out["advantages"].tolist() == pytest.approx(ours, abs=1e-5)
    assert keep == [True] * 4 + [False] * 4
    assert max(abs(a) for a in ours) > 0.5
