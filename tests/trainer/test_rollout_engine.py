"""A separate rollout engine (trainer.rollout) on the tiny model: weights pushed, LoRA merged, lag logged."""

from __future__ import annotations

import pytest
import torch

from memfactory.backends.hf import HFBackend
from memfactory.backends.vllm_engine import vllm_available
from memfactory.config import load_preset
from memfactory.errors import ConfigError, MemFactoryError
from memfactory.paths import presets_dir
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.loop import GRPOTrainer
from memfactory.trainer.rollout_engine import HFEngine, policy_weights
from memfactory.types import ChatPrompt, SamplingParams
from tests.trainer.test_loop import VowelShare, use_reward


def tiny_trainer(tmp_path, monkeypatch, *overrides: str) -> GRPOTrainer:
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.lr=1e-2", *overrides])
    trainer = GRPOTrainer(preset)
    use_reward(trainer, VowelShare())  # a reward with variance in every group, so every step updates
    return trainer


def engine_params(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.backend.model.named_parameters()}


def assert_engine_matches_policy(trainer: GRPOTrainer) -> None:
    engine = dict(trainer.backend.model.named_parameters())
    for name, tensor in policy_weights(trainer.policy):
        assert torch.allclose(engine[name], tensor.to(engine[name].dtype), atol=1e-6), name


def greedy_texts(backend) -> list[str]:
    prompts = [ChatPrompt([{"role": "user", "content": f"Tell me about {w}."}]) for w in ("cats", "rivers")]
    return [g.text for g in backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0))]


def test_default_engine_is_the_policy_itself(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, monkeypatch)
    assert trainer.backend.model is trainer.policy
    result = trainer.train_step()
    assert "rollout/policy_lag" not in result.metrics


def test_hf_engine_is_a_separate_copy_synced_after_every_step(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf")
    assert isinstance(trainer.backend, HFEngine)
    assert trainer.backend.model is not trainer.policy
    trainer.train_step()  # synced before the rollout, then the policy moved
    moved = engine_params(trainer)
    assert any(not torch.equal(moved[n], t) for n, t in policy_weights(trainer.policy)), "policy did not move"
    result = trainer.train_step()  # step 2 pushes step 1's weights first
    assert result.metrics["rollout/policy_lag"] == 0.0
    assert trainer.engine.syncs == 2
    trainer.engine.sync(trainer.step)
    assert_engine_matches_policy(trainer)
    assert greedy_texts(trainer.backend) == greedy_texts(HFBackend(trainer.policy, trainer.tokenizer))


def test_sync_every_n_steps_lets_the_engine_lag(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf", "trainer.rollout.sync_every=2")
    lags = [trainer.train_step().metrics["rollout/policy_lag"] for _ in range(3)]
    assert lags == [0.0, 1.0, 0.0]  # synced before steps 1 and 3 only
    assert trainer.engine.syncs == 2
    stale = engine_params(trainer)
    assert any(not torch.equal(stale[n], t) for n, t in policy_weights(trainer.policy))


def test_lora_weights_are_merged_into_the_engine_without_touching_the_adapters(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf", "trainer.lora={r: 4, alpha: 8}")
    trainer.train_step()
    adapters = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_" in n}
    assert adapters and any(float(p.abs().sum()) > 0 for n, p in adapters.items() if "lora_B" in n)
    trainer.engine.sync(trainer.step)
    names = dict(policy_weights(trainer.policy))
    assert not any("lora_" in n or "base_layer" in n for n in names)
    assert set(names) == {n for n, _ in trainer.backend.model.named_parameters()}
    assert_engine_matches_policy(trainer)
    # The merged engine generates what the adapted policy generates; the adapters are unchanged.
    assert greedy_texts(trainer.backend) == greedy_texts(HFBackend(trainer.policy, trainer.tokenizer))
    assert all(torch.equal(p, adapters[n]) for n, p in trainer.policy.named_parameters() if "lora_" in n)


def test_resumed_run_syncs_the_checkpoint_into_the_engine(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf")
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(0.01)  # as if a checkpoint had been loaded into the policy after the engine was built
    stats = trainer.engine.prepare(trainer.step)  # what train_step does before its first rollout
    assert trainer.engine.syncs == 1 and stats["rollout/policy_lag"] == 0.0
    assert_engine_matches_policy(trainer)
    assert trainer.engine.prepare(trainer.step)["time/sync_s"] == 0.0  # not again within the same step


def test_a_bfloat16_engine_is_importance_corrected_with_the_policys_log_probs(tmp_path, monkeypatch):
    """The engine samples in bf16, the policy trains in fp32: each token's weight is
    min(exp(policy - engine), cap), computed here from the policy's own forward and compared."""
    trainer = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf", "trainer.rollout.dtype=bfloat16")
    assert trainer.cfg.rollout.corrects_sampling  # on by default for a separate engine
    trainer.engine.prepare(trainer.step)
    calls, advantages, _ = trainer.rollout(trainer.batch_for_step(1, 0))
    batch = pack_calls(calls, trainer.tokenizer.pad_token_id)
    assert batch.num_rows <= trainer.cfg.micro_batch_size  # one micro-batch: its statistics are the step's
    with torch.no_grad():
        policy = token_logprobs(trainer.policy, batch, temperature=trainer.cfg.temperature)
    active = batch.response_mask.bool()
    ratio = torch.exp(policy - batch.old_logps)[active]
    assert 0 < float((ratio - 1).abs().max()) < 0.5  # bf16 sampling really differs, a little
    stats = trainer.policy_update([(calls, advantages)])
    cap = trainer.cfg.rollout.importance_sampling_cap
    assert stats["is_weight/mean"] == pytest.approx(float(ratio.clamp(max=cap).mean()), rel=1e-4)
    assert stats["is_weight/max"] == pytest.approx(float(ratio.max()), rel=1e-4)
    assert stats["is_weight/truncated_fraction"] == pytest.approx(float((ratio > cap).float().mean()))


def test_is_weights_are_step_metrics_of_a_separate_engine_only(tmp_path, monkeypatch):
    capped = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf", "trainer.rollout.dtype=bfloat16",
                          "trainer.rollout.importance_sampling_cap=1.0")
    m = capped.train_step().metrics
    # Cap 1: every token the policy likes more than the bf16 engine did is truncated to weight 1.
    assert 0 < m["update/is_weight/truncated_fraction"] < 1
    assert m["update/is_weight/mean"] < 1 < m["update/is_weight/max"]
    off = tiny_trainer(tmp_path, monkeypatch, "trainer.rollout.engine=hf", "trainer.rollout.importance_sampling=false")
    policy = tiny_trainer(tmp_path, monkeypatch)
    for trainer in (off, policy):
        assert not trainer.cfg.rollout.corrects_sampling
        assert not any(k.startswith("update/is_weight") for k in trainer.train_step().metrics)
    with pytest.raises(ConfigError, match="trainer.rollout.importance_sampling"):
        load_preset(presets_dir() / "tiny_test.yaml", ["trainer.rollout.importance_sampling=true"])


@pytest.mark.timeout(600)
def test_policy_rollouts_with_compiled_decoding_keep_both_prompt_sharings(tmp_path, monkeypatch):
    """model.options.decode compiled (static KV cache + torch.compile; aot_eager here, see
    tests/backends/test_static_decode.py) on a LoRA policy: the rollouts' prefill once per group and
    the update's shared prompt forward both still apply, and two steps sample exactly what eager
    decoding samples (the second after an optimizer step: the compiled step reads the new weights)."""
    common = ["trainer.lora={r: 4, alpha: 8}", "trainer.micro_batch_size=4"]  # one group per update micro-batch
    compiled = tiny_trainer(tmp_path, monkeypatch, *common, "model.options={decode: compiled, compile_backend: aot_eager}")
    eager = tiny_trainer(tmp_path, monkeypatch, *common, "model.options={decode: eager}")
    assert compiled.backend.compiled and not eager.backend.compiled
    for _ in range(2):
        rng = torch.get_rng_state()  # one process: both trainers draw from the one global stream
        ours = compiled.train_step()
        torch.set_rng_state(rng)
        theirs = eager.train_step()
        assert [c.response_ids for t in ours.trajectories for c in t.calls] == [
            c.response_ids for t in theirs.trajectories for c in t.calls
        ]
        m = ours.metrics
        assert m["rollout/shared_prefill_fraction"] == theirs.metrics["rollout/shared_prefill_fraction"] == 0.75
        assert m["update/shared_prompt_fraction"] == theirs.metrics["update/shared_prompt_fraction"] > 0
    assert hasattr(compiled.policy.get_base_model(), "_compiled_call")


def test_engine_dtype_and_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="trainer.rollout.options"):
        load_preset(presets_dir() / "tiny_test.yaml", ["trainer.rollout.options={gpu_memory_utilization: 0.3}"])
    with pytest.raises(ConfigError, match="trainer.rollout.options.gpu_memory_utilization"):
        load_preset(
            presets_dir() / "tiny_test.yaml",
            ["trainer.rollout.engine=vllm", "trainer.rollout.options={gpu_memory_utilization: 3}"],
        )
    with pytest.raises(ConfigError, match="trainer.rollout.engine"):
        load_preset(presets_dir() / "tiny_test.yaml", ["trainer.rollout.engine=sglang"])


@pytest.mark.skipif(vllm_available(), reason="vllm is installed: tests/trainer/test_vllm_*.py run the real engine")
def test_vllm_engine_without_vllm_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.rollout.engine=vllm"])
    with pytest.raises(MemFactoryError, match=r"run `make vllm`"):
        GRPOTrainer(preset)
