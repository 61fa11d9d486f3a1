"""Hand-computed checks of the GRPO advantages and loss (memfactory.trainer.grpo).

The fixture below is small enough to do on paper; every expected number is written out from the
per-token values listed in the comments, not taken from the implementation.
"""

import math

import pytest
import torch

from memfactory.trainer.grpo import calls_with_advantages, group_advantages, grpo_loss, truncated_is_weights
from memfactory.types import ModelCall, Sample, Trajectory

LN2 = math.log(2.0)

# Two sequences, three response tokens each; the last token of row 1 is padding.
# ratios r = exp(logps - old):       row 0: 1.5, 1.0, 0.5       row 1: 0.5, 1.1, (2.0 masked)
# advantages: row 0 +1, row 1 -2;  epsilon 0.2 (low), epsilon_high 0.28
# per-token loss -min(r*A, clip(r, 0.8, 1.28)*A):
#   row 0: -min(1.5, 1.28) = -1.28 (high-clipped), -1.0, -min(0.5, 0.8) = -0.5 (not clipped: A>0)
#   row 1: -min(-1.0, -1.6) = 1.6 (low-clipped), -min(-2.2, -2.2) = 2.2, [masked]
ROW0 = [-1.28, -1.0, -0.5]
ROW1 = [1.6, 2.2]
# ref - logps: row 0: 0, ln2, -ln2; row 1: ln2, 0, [masked 5.0]
# k3 = e^d - d - 1: k3(0) = 0, k3(ln2) = 1 - ln2, k3(-ln2) = ln2 - 0.5
KL0 = [0.0, 1 - LN2, LN2 - 0.5]
KL1 = [1 - LN2, 0.0]


def make_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]], dtype=torch.float64)
    ratios = torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.1, 2.0]], dtype=torch.float64)
    logps = (old + ratios.log()).requires_grad_(True)
    delta = torch.tensor([[0.0, LN2, -LN2], [LN2, 0.0, 5.0]], dtype=torch.float64)
    ref = (logps + delta).detach()
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    return logps, old, ref, adv, mask


def loss_of(loss_type, beta=0.0, **kw):
    logps, old, ref, adv, mask = make_inputs()
    loss, stats = grpo_loss(
        logps,
        old,
        adv,
        mask,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.28,
        beta=beta,
        ref_logps=ref if beta else None,
        **kw,
    )
    return logps, loss, stats


def test_grpo_is_mean_of_sequence_means():
    _, loss, _ = loss_of("grpo")
    expected = (sum(ROW0) / 3 + sum(ROW1) / 2) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.4866666667)


def test_dr_grpo_divides_by_batch_times_max_length():
    _, loss, _ = loss_of("dr_grpo", max_completion_length=4)
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 4), abs=1e-12)
    with pytest.raises(ValueError, match="max_completion_length"):
        loss_of("dr_grpo")  # the width of a trimmed micro-batch is no constant normaliser


def test_dapo_divides_by_active_tokens_of_the_global_batch():
    _, loss, _ = loss_of("dapo")
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 5, abs=1e-12)
    _, loss_acc, _ = loss_of("dapo", num_items_in_batch=10)  # this micro-batch is half the tokens
    assert loss_acc.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 10, abs=1e-12)
    _, loss_t, _ = loss_of("dapo", num_items_in_batch=torch.tensor(10.0))
    assert loss_t.item() == pytest.approx(loss_acc.item(), abs=1e-12)


def test_num_sequences_in_batch_spreads_grpo_over_micro_batches():
    _, loss, _ = loss_of("grpo", num_sequences_in_batch=4)
    assert loss.item() == pytest.approx((sum(ROW0) / 3 + sum(ROW1) / 2) / 4, abs=1e-12)
    _, loss, _ = loss_of("dr_grpo", num_sequences_in_batch=4, max_completion_length=4)
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 16, abs=1e-12)


def test_kl_term_with_k3_estimator():
    beta = 0.1
    _, loss, stats = loss_of("grpo", beta=beta, kl_bias_correction=False)
    row0 = [a + beta * k for a, k in zip(ROW0, KL0)]
    row1 = [a + beta * k for a, k in zip(ROW1, KL1)]
    assert loss.item() == pytest.approx((sum(row0) / 3 + sum(row1) / 2) / 2, abs=1e-12)
    assert stats["kl"].item() == pytest.approx((sum(KL0) + sum(KL1)) / 5, abs=1e-12)
    _, loss, _ = loss_of("dapo", beta=beta, kl_bias_correction=False)
    assert loss.item() == pytest.approx((sum(row0) + sum(row1)) / 5, abs=1e-12)
    _, loss, _ = loss_of("dr_grpo", beta=beta, max_completion_length=4, kl_bias_correction=False)
    assert loss.item() == pytest.approx((sum(row0) + sum(row1)) / 8, abs=1e-12)


def test_kl_bias_correction_weights_kl_by_the_ratio():
    """TRL 1.16's default: per-token KL times r (row 0 ratios 1.5, 1, 0.5; row 1 0.5, 1.1)."""
    beta = 0.1
    kl0 = [1.5 * 0.0, 1.0 * (1 - LN2), 0.5 * (LN2 - 0.5)]
    kl1 = [0.5 * (1 - LN2), 1.1 * 0.0]
    logps, loss, stats = loss_of("dapo", beta=beta)
    row0 = [a + beta * k for a, k in zip(ROW0, kl0)]
    row1 = [a + beta * k for a, k in zip(ROW1, kl1)]
    assert loss.item() == pytest.approx((sum(row0) + sum(row1)) / 5, abs=1e-12)
    assert stats["kl"].item() == pytest.approx((sum(kl0) + sum(kl1)) / 5, abs=1e-12)
    # gradient of the high-clipped token 0 of row 0 now comes from the KL alone:
    # d/dl [beta * r * k3(ref - l)] = beta * r * (k3 + 1 - e^d) with d = 0, r = 1.5 -> 0
    # token 1 of row 1 (d = 0, r = 1.1, unclipped): (-r*A + beta * r * (k3 + 1 - e^d)) / 5 = 2.2 / 5
    loss.backward()
    assert logps.grad[0, 0].item() == pytest.approx(0.0, abs=1e-12)
    assert logps.grad[1, 1].item() == pytest.approx(2.2 / 5, abs=1e-12)
    # token 1 of row 0 (d = ln2, r = 1, A = 1): (-1 + 0.1 * (1 - ln2 + 1 - 2)) / 5
    assert logps.grad[0, 1].item() == pytest.approx((-1 + beta * (1 - LN2 - 1)) / 5, abs=1e-12)


def test_kl_clamp_caps_each_token_and_stops_its_gradient():
    """MemAgent/verl low_var_kl: k3 clamped to [-c, c], no ratio weighting. With c = 0.25 only
    k3(-ln2) = ln2 - 0.5 = 0.193 and k3(0) = 0 stay; the two k3(ln2) = 0.307 tokens become 0.25."""
    beta, c = 0.1, 0.25
    logps, loss, stats = loss_of("dapo", beta=beta, kl_bias_correction=False, kl_clamp=c)
    kl0 = [0.0, c, LN2 - 0.5]
    kl1 = [c, 0.0]
    row0 = [a + beta * k for a, k in zip(ROW0, kl0)]
    row1 = [a + beta * k for a, k in zip(ROW1, kl1)]
    assert loss.item() == pytest.approx((sum(row0) + sum(row1)) / 5, abs=1e-12)
    assert stats["kl"].item() == pytest.approx((sum(kl0) + sum(kl1)) / 5, abs=1e-12)
    loss.backward()
    # token 1 of row 0 (A = 1, r = 1, unclipped ratio): only the policy term, -1/5; the clamped KL adds nothing
    assert logps.grad[0, 1].item() == pytest.approx(-1 / 5, abs=1e-12)
    # token 2 of row 0 (d = -ln2, not clamped, A = 1, r = 0.5 < 0.8 but A > 0 so unclipped):
    # (-r*A + beta * (1 - e^d)) / 5 = (-0.5 + 0.1 * 0.5) / 5
    assert logps.grad[0, 2].item() == pytest.approx((-0.5 + beta * 0.5) / 5, abs=1e-12)
    # A clamp wider than every value changes nothing.
    _, wide, _ = loss_of("dapo", beta=beta, kl_bias_correction=False, kl_clamp=10.0)
    _, plain, _ = loss_of("dapo", beta=beta, kl_bias_correction=False)
    assert wide.item() == pytest.approx(plain.item(), abs=1e-15)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_clamped_kl_has_a_finite_gradient_where_exp_would_overflow(bias_correction):
    """A token whose reference log-prob exceeds the policy's by 99.9 (> ~88.7, where exp overflows
    in float32): the log-ratio is clamped to 20 before exp, as current verl's low_var_kl, so k3 is
    e^20 - 21 before the value clamp (10) and the gradient stays finite: the clamped token passes no
    KL gradient through its value, only its policy term (-A / 2 tokens) and, under the bias
    correction, the clamped value's weight on the ratio (beta * 10 * r / 2 tokens, r = 1)."""
    logps = torch.tensor([[-100.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-0.1, -1.0]])
    loss, stats = grpo_loss(logps, logps.detach(), torch.tensor([1.0]), torch.ones(1, 2), loss_type="grpo",
                            epsilon=0.2, beta=0.1, ref_logps=ref, kl_clamp=10.0, kl_bias_correction=bias_correction)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all(), logps.grad
    assert stats["kl"].item() == pytest.approx(10.0 / 2)  # (10 + 0) over 2 tokens
    assert logps.grad[0].tolist() == pytest.approx([(-1 + 0.1 * 10.0 * bias_correction) / 2, -0.5], rel=1e-6)
    # Inside the clamp nothing changes: |ref - logps| = 19 keeps the plain k3 value and gradient.
    near = torch.tensor([[-19.1, -1.0]], requires_grad=True)
    _, wide = grpo_loss(near, near.detach(), torch.tensor([0.0]), torch.ones(1, 2), loss_type="grpo", epsilon=0.2,
                        beta=1.0, ref_logps=ref, kl_clamp=1e12, kl_bias_correction=False)
    assert wide["kl"].item() == pytest.approx((math.exp(19.0) - 19.0 - 1) / 2, rel=1e-5)


def test_no_kl_stat_without_beta_and_beta_needs_reference():
    _, _, stats = loss_of("grpo")
    assert "kl" not in stats
    logps, old, _, adv, mask = make_inputs()
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, adv, mask, loss_type="grpo", epsilon=0.2, beta=0.1)


def test_clip_statistics_as_trl_logs_them():
    _, _, stats = loss_of("grpo")
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)  # row 1 token 0
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)  # row 0 token 0
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)
    assert stats["clip_ratio/low_min"].item() == pytest.approx(0.0)  # per row: 0, 1/2
    assert stats["clip_ratio/high_max"].item() == pytest.approx(1 / 3)  # per row: 1/3, 0
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 1.0 + 0.5 + 0.5 + 1.1) / 5)
    assert stats["num_tokens"].item() == 5
    assert not any(v.requires_grad for v in stats.values())


def test_epsilon_high_defaults_to_epsilon():
    logps, old, _, adv, mask = make_inputs()
    loss, stats = grpo_loss(logps, old, adv, mask, loss_type="dapo", epsilon=0.2)
    row0 = [-1.2, -1.0, -0.5]  # 1.5 now clipped at 1.2
    assert loss.item() == pytest.approx((sum(row0) + sum(ROW1)) / 5, abs=1e-12)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)


def test_gradients_vanish_on_clipped_and_padded_tokens():
    logps, loss, _ = loss_of("grpo")
    loss.backward()
    g = logps.grad
    # d/dlogp of -r*A (unclipped) is -r*A, times the grpo weight 1/(len_i * B)
    assert g[0, 0].item() == 0.0  # high-clipped
    assert g[0, 1].item() == pytest.approx(-1.0 * 1.0 / 6)
    assert g[0, 2].item() == pytest.approx(-0.5 * 1.0 / 6)
    assert g[1, 0].item() == 0.0  # low-clipped
    assert g[1, 1].item() == pytest.approx(-1.1 * -2.0 / 4)
    assert g[1, 2].item() == 0.0  # padding


def test_empty_row_counts_as_a_sequence_but_adds_nothing():
    logps, old, _, adv, mask = make_inputs()
    mask = mask.clone()
    mask[1] = 0
    loss, stats = grpo_loss(logps, old, adv, mask, loss_type="grpo", epsilon=0.2, epsilon_high=0.28)
    assert loss.item() == pytest.approx(sum(ROW0) / 3 / 2, abs=1e-12)
    assert stats["clip_ratio/low_min"].item() == 0.0  # the empty row's NaN rate is ignored
    assert torch.isfinite(loss)


def test_shape_and_name_errors():
    logps, old, _, adv, mask = make_inputs()
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, old, adv, mask, loss_type="ppo", epsilon=0.2)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, old, adv[:1], mask, loss_type="grpo", epsilon=0.2)
    with pytest.raises(ValueError, match="same"):
        grpo_loss(logps, old[:, :2], adv, mask, loss_type="grpo", epsilon=0.2)


# ---------------------------------------------------------------------------- importance sampling
# The engine's log-probs are old - ln(w) for the untruncated weights w = exp(old - sampling):
#   row 0: 2.0, 0.5, 4.0      row 1: 0.25, 5.0, (100 on the padding token)
# truncated at cap 3:         row 0: 2.0, 0.5, 3.0      row 1: 0.25, 3.0
# per-token loss times weight: row 0: -2.56, -0.5, -1.5   row 1: 0.4, 6.6
IS_W = [[2.0, 0.5, 4.0], [0.25, 5.0, 100.0]]
IS_ROW0 = [-1.28 * 2.0, -1.0 * 0.5, -0.5 * 3.0]
IS_ROW1 = [1.6 * 0.25, 2.2 * 3.0]


def sampling_of(old):
    return old - torch.tensor(IS_W, dtype=old.dtype).log()


def test_truncated_is_weights_multiply_each_tokens_loss():
    _, old, _, _, _ = make_inputs()
    logps, loss, stats = loss_of("grpo", sampling_logps=sampling_of(old), importance_sampling_cap=3.0)
    expected = (sum(IS_ROW0) / 3 + sum(IS_ROW1) / 2) / 2
    assert expected == pytest.approx(0.99)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["is_weight/mean"].item() == pytest.approx((2.0 + 0.5 + 3.0 + 0.25 + 3.0) / 5, abs=1e-12)
    assert stats["is_weight/max"].item() == pytest.approx(5.0, abs=1e-12)  # untruncated; padding's 100 ignored
    assert stats["is_weight/truncated_fraction"].item() == pytest.approx(2 / 5, abs=1e-12)
    # The weights are constants: the gradient of an unclipped token is -r * A * w / (len * B).
    loss.backward()
    g = logps.grad
    assert g[0, 0].item() == 0.0 and g[1, 0].item() == 0.0 and g[1, 2].item() == 0.0  # clipped, clipped, padding
    assert g[0, 1].item() == pytest.approx(-1.0 * 1.0 * 0.5 / 6, abs=1e-12)
    assert g[0, 2].item() == pytest.approx(-0.5 * 1.0 * 3.0 / 6, abs=1e-12)
    assert g[1, 1].item() == pytest.approx(-1.1 * -2.0 * 3.0 / 4, abs=1e-12)


def test_is_weights_leave_the_kl_term_alone_and_follow_the_cap():
    _, old, _, _, _ = make_inputs()
    beta = 0.1
    _, loss, _ = loss_of("dapo", beta=beta, kl_bias_correction=False, sampling_logps=sampling_of(old))
    row0 = [a + beta * k for a, k in zip(IS_ROW0, KL0)]  # the default cap is TRL's 3.0
    row1 = [a + beta * k for a, k in zip(IS_ROW1, KL1)]
    assert loss.item() == pytest.approx((sum(row0) + sum(row1)) / 5, abs=1e-12)
    _, loss, stats = loss_of("dapo", sampling_logps=sampling_of(old), importance_sampling_cap=1e6)
    untruncated = [-1.28 * 2.0, -1.0 * 0.5, -0.5 * 4.0, 1.6 * 0.25, 2.2 * 5.0]
    assert loss.item() == pytest.approx(sum(untruncated) / 5, abs=1e-12)
    assert stats["is_weight/mean"].item() == pytest.approx((2.0 + 0.5 + 4.0 + 0.25 + 5.0) / 5, abs=1e-12)
    assert stats["is_weight/truncated_fraction"].item() == 0.0


def test_is_correction_is_a_no_op_when_the_engine_scores_like_the_policy():
    _, old, _, _, _ = make_inputs()
    _, plain, plain_stats = loss_of("grpo")
    _, same, stats = loss_of("grpo", sampling_logps=old.clone())
    assert same.item() == pytest.approx(plain.item(), abs=1e-15)
    assert (stats["is_weight/mean"].item(), stats["is_weight/max"].item()) == (1.0, 1.0)
    assert stats["is_weight/truncated_fraction"].item() == 0.0
    assert not any(k.startswith("is_weight") for k in plain_stats)  # no engine log-probs, no statistics


def test_is_weights_of_nan_and_padding_are_one():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    sampling = torch.tensor([[float("nan"), -2.0 - math.log(0.5), 7.0]])
    weights, stats = truncated_is_weights(old, sampling, torch.tensor([[1.0, 1.0, 0.0]]), cap=2.0)
    assert weights[0].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert stats["is_weight/mean"].item() == pytest.approx(0.75)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sampling, torch.ones(1, 3), cap=0.0)
    logps, old, _, adv, mask = make_inputs()
    with pytest.raises(ValueError, match="sampling_logps"):
        grpo_loss(logps, old, adv, mask, loss_type="grpo", epsilon=0.2, sampling_logps=old[:, :2])


# ---------------------------------------------------------------------------- advantages


def test_group_advantages_scaled_with_sample_std():
    # group 7: 1, 0, 0, 1 (interleaved with group 3: 0, 3)
    rewards = [1.0, 0.0, 0.0, 3.0, 0.0, 1.0]
    groups = [7, 3, 7, 3, 7, 7]
    adv, keep = group_advantages(rewards, groups)
    std7 = math.sqrt(4 * 0.25 / 3)  # sample std of 1,0,0,1
    std3 = math.sqrt(2 * 1.5**2 / 1)  # sample std of 0,3
    expected = [
        0.5 / (std7 + 1e-4),
        -1.5 / (std3 + 1e-4),
        -0.5 / (std7 + 1e-4),
        1.5 / (std3 + 1e-4),
        -0.5 / (std7 + 1e-4),
        0.5 / (std7 + 1e-4),
    ]
    assert adv == pytest.approx(expected, abs=1e-12)
    assert keep == [True] * 6


def test_group_advantages_unscaled_and_custom_eps():
    adv, keep = group_advantages([2.0, 0.0, 1.0], [0, 0, 0], scale=False)
    assert adv == pytest.approx([1.0, -1.0, 0.0])
    assert keep == [True, True, True]
    adv, _ = group_advantages([2.0, 0.0], [0, 0], eps=1.0)
    assert adv == pytest.approx([1.0 / (math.sqrt(2) + 1.0), -1.0 / (math.sqrt(2) + 1.0)])


def test_equal_groups_are_skipped_not_turned_into_noise():
    rewards = [0.5, 0.5, 0.5 + 1e-9, 1.0, 0.0, 4.0]
    groups = [0, 0, 0, 1, 1, 2]  # group 0 equal within 1e-8, group 2 has a single member
    adv, keep = group_advantages(rewards, groups)
    assert keep == [False, False, False, True, True, False]
    assert adv[:3] == [0.0, 0.0, 0.0] and adv[5] == 0.0
    assert adv[3] > 0 > adv[4]
    with pytest.raises(ValueError):
        group_advantages([1.0], [0, 1])


def _traj(group, calls):
    return Trajectory(sample=Sample(id="s", question="q", answers=["a"]), calls=calls, group=group)


def _call(module, trainable=True):
    return ModelCall(module=module, prompt_ids=[1], response_ids=[2], logprobs=[-0.1], text="x", trainable=trainable)


def test_calls_with_advantages_credit_and_skipping():
    t0 = _traj(0, [_call("mem"), _call("frozen", trainable=False), _call("answer")])
    t1 = _traj(0, [_call("mem"), _call("answer")])
    t2 = _traj(1, [_call("mem")])
    calls, adv = calls_with_advantages([t0, t1, t2], [0.7, -0.7, 0.0], [True, True, False])
    assert [c.module for c in calls] == ["mem", "answer", "mem", "answer"]
    assert adv == [0.7, 0.7, -0.7, -0.7]
    calls, adv = calls_with_advantages([t0, t1, t2], [0.7, -0.7, 0.0], [True, True, False], credit="final_only")
    assert [c.module for c in calls] == ["answer", "answer"] and adv == [0.7, -0.7]
