"""`memfactory plan` counts a colocated vLLM engine: its memory share, and sleep mode freeing it for the update."""

from __future__ import annotations

import pytest

from memfactory.backends.shape import model_shape
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.planner.costs import GIB
from memfactory.planner.plan import estimate_memory


def demo(*overrides: str):
    return load_preset(presets_dir() / "tiny_cpu_demo.yaml", list(overrides))


def test_on_cpu_the_engine_holds_its_weights_and_kv_pool_in_both_phases():
    policy = estimate_memory(demo())
    plan = estimate_memory(demo("trainer.rollout.engine=vllm", "trainer.rollout.options={kv_cache_gib: 2}"))
    weights = model_shape("smollm2-135m-instruct").parameters * 4 / GIB  # float32 engine
    assert plan.components["vllm_engine"] == pytest.approx(weights + 2.0, rel=1e-3)
    assert plan.components["kv_cache"] == 0.0  # the engine's pool replaces the policy's own rollout cache
    assert plan.phases["update"] == pytest.approx(policy.phases["update"] + weights + 2.0, abs=0.01)
    assert any(n.startswith("vLLM engine") and "no sleep mode" in n for n in plan.notes)
    assert "| vllm_engine |" in plan.to_markdown() and "| vllm_engine |" not in policy.to_markdown()


def test_on_a_gpu_it_takes_its_memory_share_and_sleep_mode_frees_it_for_the_update():
    awake = estimate_memory(demo("trainer.rollout.engine=vllm", "trainer.rollout.options={gpu_memory_utilization: 0.4}"),
                            gpu_mem_gib=80)
    asleep = estimate_memory(demo("trainer.rollout.engine=vllm",
                                  "trainer.rollout.options={gpu_memory_utilization: 0.4, enable_sleep_mode: true}"),
                             gpu_mem_gib=80)
    assert awake.components["vllm_engine"] == pytest.approx(32.0)
    assert awake.phases["update"] - asleep.phases["update"] == pytest.approx(32.0, abs=0.01)
    assert awake.phases["rollout"] == pytest.approx(asleep.phases["rollout"])
    assert any("asleep during the update" in n for n in asleep.notes)
