"""Packing model calls into token batches and scoring them with a real (tiny, random) Qwen3."""

import pytest
import torch
import transformers

from memfactory.backends.model_api import forward_parameters
from memfactory.trainer.batching import (
    TokenBatch,
    pack_calls,
    position_ids_from_mask,
    split_micro_batches,
    token_logprobs,
)
from memfactory.types import ModelCall

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=PAD,
    )
    m = transformers.Qwen3ForCausalLM(config).float()
    m.eval()
    return m


def call(prompt, response, logprobs=None):
    logprobs = [-0.1 * (i + 1) for i in range(len(response))] if logprobs is None else logprobs
    return ModelCall(module="m", prompt_ids=prompt, response_ids=response, logprobs=logprobs, text="")


CALLS = [
    call([5, 6, 7], [8, 9]),
    call([10], [11, 12, 13, 14]),
    call([15, 16, 17, 18, 19], []),  # empty response
    call([20, 21], [22]),
]


def test_pack_calls_layout():
    b = pack_calls(CALLS, PAD)
    assert b.prompt_width == 5 and b.response_width == 4
    assert b.input_ids.tolist() == [
        [0, 0, 5, 6, 7, 8, 9, 0, 0],
        [0, 0, 0, 0, 10, 11, 12, 13, 14],
        [15, 16, 17, 18, 19, 0, 0, 0, 0],
        [0, 0, 0, 20, 21, 22, 0, 0, 0],
    ]
    assert b.attention_mask.tolist() == [
        [0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0],
    ]
    assert b.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert b.old_logps[0].tolist() == pytest.approx([-0.1, -0.2, 0.0, 0.0])
    assert b.old_logps[2].tolist() == [0.0] * 4
    assert b.response_ids[1].tolist() == [11, 12, 13, 14]
    assert b.num_tokens == 7


def test_pack_calls_rejects_bad_calls():
    with pytest.raises(ValueError, match="empty prompt"):
        pack_calls([call([], [1])], PAD)
    with pytest.raises(ValueError, match="logprobs"):
        pack_calls([call([1], [2, 3], [-0.5])], PAD)
    with pytest.raises(ValueError):
        pack_calls([], PAD)


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    pos = position_ids_from_mask(mask)
    assert pos[0][mask[0] == 1].tolist() == [0, 1, 2]  # padding positions are never attended to
    assert pos[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert (pos >= 0).all()


def test_select_trims_padding_columns():
    b = pack_calls(CALLS, PAD)
    sub = b.select([3, 0])
    assert sub.prompt_width == 3 and sub.response_width == 2
    assert sub.input_ids.tolist() == [[0, 20, 21, 22, 0], [5, 6, 7, 8, 9]]
    assert sub.response_mask.tolist() == [[1, 0], [1, 1]]
    only_empty = b.select([2])
    assert only_empty.response_width == 0 and only_empty.prompt_width == 5
    untrimmed = b.select([3, 0], trim=False)
    assert untrimmed.input_ids.shape == (2, 9)


def test_split_micro_batches_covers_rows_once():
    b = pack_calls(CALLS, PAD)
    parts = split_micro_batches(b, 3)
    assert [len(p) for p in parts] == [3, 1]
    assert sorted(torch.cat(parts).tolist()) == [0, 1, 2, 3]
    # longest rows first (lengths 5, 5, 5, 3), so the short row sits alone
    assert parts[1].tolist() == [3]
    plain = split_micro_batches(b, 2, sort_by_length=False)
    assert [p.tolist() for p in plain] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError):
        split_micro_batches(b, 0)


def reference_logprobs(model, c: ModelCall, temperature=1.0):
    """Score one call alone, unpadded, with the full logits and log_softmax."""
    ids = torch.tensor([c.prompt_ids + c.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logps = torch.log_softmax(logits, dim=-1)
    p = len(c.prompt_ids)
    return torch.tensor([logps[p - 1 + j, tok].item() for j, tok in enumerate(c.response_ids)])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("micro_batch_size", [None, 3, 1])
def test_padded_batch_matches_unpadded_rows(model, temperature, micro_batch_size):
    b = pack_calls(CALLS, PAD)
    with torch.no_grad():
        got = token_logprobs(model, b, temperature=temperature, micro_batch_size=micro_batch_size)
    assert got.shape == (4, 4) and got.dtype == torch.float32
    for i, c in enumerate(CALLS):
        r = len(c.response_ids)
        want = reference_logprobs(model, c, temperature)
        assert torch.allclose(got[i, :r], want, atol=1e-5), (i, got[i, :r], want)
        assert (got[i, r:] == 0).all()
    assert (got <= 0).all()


def test_works_without_logits_to_keep(model):
    """A model whose forward lacks logits_to_keep gets the full logits and the same answer."""

    class NoKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
            )

    b = pack_calls(CALLS, PAD)
    with torch.no_grad():
        assert torch.allclose(token_logprobs(NoKeep(model), b), token_logprobs(model, b), atol=1e-6)


def test_gradients_flow_to_the_weights(model):
    b = pack_calls(CALLS, PAD)
    model.zero_grad()
    logps = token_logprobs(model, b, micro_batch_size=2)
    assert logps.requires_grad
    (logps * b.response_mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_all_empty_responses_give_empty_scores(model):
    b = pack_calls([call([1, 2], []), call([3], [])], PAD)
    out = token_logprobs(model, b)
    assert out.shape == (2, 0)


def test_to_device_roundtrip():
    b = pack_calls(CALLS, PAD).to("cpu")
    assert isinstance(b, TokenBatch) and b.input_ids.device.type == "cpu"


def test_lora_wrapped_model_scores_and_trains_adapters(model):
    peft = pytest.importorskip("peft")
    b = pack_calls(CALLS, PAD)
    with torch.no_grad():
        base = token_logprobs(model, b)
    torch.manual_seed(0)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), adapter_name="t"
    )
    try:
        assert "logits_to_keep" in forward_parameters(lora)  # found through the PEFT wrapper
        logps = token_logprobs(lora, b, micro_batch_size=2)
        assert torch.allclose(logps.detach(), base, atol=1e-6)  # LoRA B starts at zero
        logps.sum().backward()
        lora_grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]
        assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    finally:
        lora.unload()  # give the shared module-scoped model back without adapters
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad()


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(model, loss_type):
    """The loop recipe of memfactory.trainer.grpo: unequal, trimmed micro-batches whose summed
    gradients equal those of the whole step's batch in one piece."""
    from memfactory.trainer.grpo import calls_with_advantages, group_advantages, grpo_loss
    from memfactory.types import Sample, Trajectory

    sample = Sample(id="s", question="q", answers=["a"])
    trajs = [
        Trajectory(sample=sample, calls=[CALLS[0], CALLS[1]], group=0, reward=1.0),
        Trajectory(sample=sample, calls=[CALLS[2]], group=0, reward=0.0),
        Trajectory(sample=sample, calls=[CALLS[3], CALLS[1], CALLS[0]], group=1, reward=0.5),
        Trajectory(sample=sample, calls=[CALLS[1]], group=1, reward=0.0),
        Trajectory(sample=sample, calls=[CALLS[0]], group=2, reward=1.0),  # equal group: skipped
        Trajectory(sample=sample, calls=[CALLS[3]], group=2, reward=1.0),
    ]
    adv, keep = group_advantages([t.reward for t in trajs], [t.group for t in trajs])
    calls, call_adv = calls_with_advantages(trajs, adv, keep)
    assert len(calls) == 7
    batch = pack_calls(calls, PAD)
    call_adv = torch.tensor(call_adv)
    with torch.no_grad():
        current = token_logprobs(model, batch)
    # ratios 1.35 and 0.74 alternating: clipped or not depending on the advantage's sign
    sign = (-1.0) ** torch.arange(batch.response_width)
    old = (current - 0.3 * sign) * batch.response_mask
    kw = {"loss_type": loss_type, "epsilon": 0.2, "max_completion_length": 8}

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return out

    model.zero_grad()
    loss, _ = grpo_loss(token_logprobs(model, batch), old, call_adv, batch.response_mask, **kw)
    loss.backward()
    full = grads()

    total = 0.0
    parts = split_micro_batches(batch, 3)
    assert [len(p) for p in parts] == [3, 3, 1]
    for idx in parts:
        mb = batch.select(idx)
        mb_old = old[idx][:, : mb.response_width]
        part, _ = grpo_loss(
            token_logprobs(model, mb),
            mb_old,
            call_adv[idx],
            mb.response_mask,
            num_items_in_batch=batch.num_tokens,
            num_sequences_in_batch=batch.num_rows,
            **kw,
        )
        part.backward()
        total += part.item()
    accumulated = grads()
    assert total == pytest.approx(loss.item(), rel=1e-5)
    for name, g in full.items():
        assert torch.allclose(accumulated[name], g, atol=1e-6, rtol=1e-4), name
    assert full["lm_head.weight"].abs().sum() > 0


def test_bfloat16_model_scores_in_float32(model):
    b = pack_calls(CALLS, PAD)
    low = transformers.Qwen3ForCausalLM(model.config).to(torch.bfloat16)
    low.load_state_dict(model.state_dict())
    with torch.no_grad():
        got, want = token_logprobs(low, b), token_logprobs(model, b)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_matches_cpu(model):
    from memfactory.trainer.grpo import grpo_loss

    b = pack_calls(CALLS, PAD)
    with torch.no_grad():
        want = token_logprobs(model, b)
    gpu_model = transformers.Qwen3ForCausalLM(model.config).cuda()
    gpu_model.load_state_dict(model.state_dict())
    gb = b.to("cuda")
    idx = split_micro_batches(gb, 2)[0]
    mb = gb.select(idx)
    logps = token_logprobs(gpu_model, gb, micro_batch_size=2)
    assert logps.device.type == "cuda"
    assert torch.allclose(logps.detach().cpu(), want, atol=1e-4)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], device="cuda")
    loss, stats = grpo_loss(
        token_logprobs(gpu_model, mb),
        mb.old_logps,
        adv[idx],
        mb.response_mask,
        loss_type="dapo",
        epsilon=0.2,
        num_items_in_batch=gb.num_tokens,
    )
    loss.backward()
    assert torch.isfinite(loss) and stats["num_tokens"].device.type == "cuda"
