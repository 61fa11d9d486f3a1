"""The named protocols on real presets: MemAgent's prompts, caps and sampling; MemFactory's boxed template and metric."""

from __future__ import annotations

from memfactory.agents.build import build_agent
from memfactory.eval.protocols import MEMAGENT, MEMFACTORY
from memfactory.modules.recurrent import NO_MEMORY, UPDATE_TEMPLATE
from memfactory.paths import presets_dir
from memfactory.targets import make_rows

TINY_PRESET = presets_dir() / "memagent_tiny_test.yaml"


def _memory_module(preset):
    return build_agent(preset).modules["memory"]


def test_memagent_protocol_uses_memagents_prompts_caps_and_no_prefix():
    (row,) = make_rows([str(TINY_PRESET)], protocol=MEMAGENT)
    options = _memory_module(row.preset).options
    assert (options.chunk_tokens, options.memory_tokens, options.answer_tokens) == (5000, 1024, 1024)
    assert options.max_chunks is None and options.answer_prefix == "" and options.sample_answer_prefix is False
    assert options.answer_format == "answer_is" and options.answer_template is None
    assert 'format your response as follows "Therefore, the answer is (insert answer here)"' in options.final_template
    assert options.update_template == UPDATE_TEMPLATE and options.memory_init == NO_MEMORY
    params = MEMAGENT.params(row.preset)
    assert (params.temperature, params.top_p, params.max_new_tokens, params.stop) == (0.7, 0.95, 1024, [])
    assert MEMAGENT.k == 1 and MEMAGENT.default_metric([row.preset]) == "memagent_sub_em"
    # --set fields win over the protocol's
    (mine,) = make_rows(
        [str(TINY_PRESET)],
        overrides=["modules.memory.chunk_tokens=64", 'modules.memory.answer_prefix="Answer: "'],
        protocol=MEMAGENT,
    )
    options = _memory_module(mine.preset).options
    assert (options.chunk_tokens, options.answer_prefix, options.memory_tokens) == (64, "Answer: ", 1024)
    # explicit sampling values win too
    assert MEMAGENT.params(row.preset, temperature=0.2, top_p=1.0, max_new_tokens=7).temperature == 0.2


def test_memfactory_protocol_keeps_the_presets_modules_with_the_boxed_template():
    smollm = presets_dir() / "memagent_smollm2_cpu.yaml"
    (bare, custom) = make_rows(["tiny://qwen3-mini", str(smollm)], protocol=MEMFACTORY)
    options = _memory_module(bare.preset).options
    assert options.answer_format == "boxed" and "put the answer in \\boxed{{}}" in options.final_template
    assert (options.chunk_tokens, options.memory_tokens) == (2500, 2048)  # the paper's, from the default preset
    assert MEMFACTORY.params(bare.preset).max_new_tokens == 2048 and MEMFACTORY.params(bare.preset).temperature == 1.0
    assert MEMFACTORY.params(custom.preset).max_new_tokens == 48  # the preset trains with fewer
    assert MEMFACTORY.params(custom.preset).stop == ["}"]
    own = _memory_module(custom.preset).options
    assert own.answer_template.endswith("inside \\boxed{{}}.") and own.answer_prefix == "\\boxed{"
    assert MEMFACTORY.k == 4 and MEMFACTORY.default_metric([bare.preset]) == "boxed_em"
    judged = bare.preset.model_copy(update={"judge": bare.preset.model})
    assert MEMFACTORY.default_metric([judged]) == "llm_judge"
    assert MEMFACTORY.default_metric([judged, bare.preset]) == "boxed_em"  # one table, one metric
