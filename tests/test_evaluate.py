"""avg@k evaluation: table arithmetic, per-set metrics, the workflow API on a real tiny model, resume."""

from __future__ import annotations

import csv
import io
import json

import pytest

from memfactory.backends.hf import HFBackend
from memfactory.config import load_preset
from memfactory.errors import MemFactoryError
from memfactory.evaluate import (
    ResultsStore,
    build_table,
    evaluate_workflow,
    metric_for,
    run_eval,
    score_trajectories,
)
from memfactory.paths import presets_dir
from memfactory.targets import make_rows
from memfactory.types import Sample, SamplingParams, Trajectory

TINY_PRESET = presets_dir() / "memagent_tiny_test.yaml"
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, stop=["}"])


class CountingHFBackend(HFBackend):
    """The real HF backend, counting how many prompts it was asked to complete."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.prompts = 0

    def generate(self, prompts, params):
        self.calls += 1
        self.prompts += len(prompts)
        return super().generate(prompts, params)


@pytest.fixture
def counting_backend(tiny_backend) -> CountingHFBackend:
    return CountingHFBackend(tiny_backend.model, tiny_backend.tokenizer)


def record(row: str, set_name: str, sid: str, scores: list[float]) -> dict:
    return {"row": row, "set": set_name, "sample_id": sid, "scores": scores, "score": sum(scores) / len(scores)}


# --------------------------------------------------------------------------- table arithmetic


def test_table_cells_are_avg_at_k_over_paths_and_questions():
    records = [
        record("base", "eval_50", "q1", [1, 0, 0, 1]),  # 0.5
        record("base", "eval_50", "q2", [1, 1, 1, 0]),  # 0.75
        record("base", "eval_fwe", "q1", [1 / 3, 2 / 3, 1, 0]),  # 0.5
        record("rl", "eval_50", "q1", [1, 1, 1, 1]),
        record("rl", "eval_50", "q2", [0, 0, 0, 1]),
        record("rl", "eval_fwe", "q1", [0, 0, 0, 0]),
        record("other", "eval_50", "q1", [1, 1, 1, 1]),  # a row not asked for is ignored
    ]
    table = build_table(records, ["base", "rl"], ["eval_50", "eval_fwe"], k=4)
    assert table.cells["base"]["eval_50"] == pytest.approx(0.625)
    assert table.cells["base"]["eval_fwe"] == pytest.approx(0.5)
    assert table.average("base") == pytest.approx(0.5625)
    assert table.cells["rl"]["eval_50"] == pytest.approx(0.625)
    assert table.average("rl") == pytest.approx(0.3125)
    assert table.counts["base"] == {"eval_50": 2, "eval_fwe": 1}

    lines = table.markdown().splitlines()
    assert lines[0] == "| model | eval_50 | eval_fwe | avg |"
    assert lines[2] == "| base | 0.6250 | 0.5000 | 0.5625 |"
    assert lines[3] == "| rl | 0.6250 | 0.0000 | 0.3125 |"
    parsed = list(csv.reader(io.StringIO(table.csv())))
    assert parsed == [
        ["model", "eval_50", "eval_fwe", "avg"],
        ["base", "0.6250", "0.5000", "0.5625"],
        ["rl", "0.6250", "0.0000", "0.3125"],
    ]


def test_missing_cell_prints_a_dash_and_no_average():
    table = build_table([record("a", "s1", "q", [1.0])], ["a"], ["s1", "s2"], k=1)
    assert table.body() == [["a", "1.0000", "-", "-"]]


# --------------------------------------------------------------------------- metric per set


def test_each_sample_is_scored_with_its_sets_metric():
    hotpot = Sample(id="h", question="q", answers=["apple", "pear", "fig"])
    ruler = Sample(id="r", question="q", answers=["apple", "pear", "fig"], meta={"metric": "string_match_all"})
    assert metric_for(hotpot) == "sub_em" and metric_for(ruler) == "string_match_all"
    assert metric_for(hotpot, default="f1") == "f1"
    answers = ["\\boxed{apple pear}", "nothing here"]
    trajectories = [Trajectory(sample=s, answer=a) for s in (hotpot, ruler) for a in answers]
    results = score_trajectories([hotpot, ruler], trajectories, k=2, latency_s=2.0)
    assert [r.metric for r in results] == ["sub_em", "string_match_all"]
    # sub_em: "apple" is inside "apple pear" -> 1; RULER: 2 of 3 gold words present
    assert results[0].scores == [1.0, 0.0]
    assert results[1].scores == pytest.approx([2 / 3, 0.0])
    assert results[1].score == pytest.approx(1 / 3)
    assert results[0].predictions == ["apple pear", "nothing here"]
    assert results[0].latency_s == pytest.approx(1.0)


def test_unknown_metric_is_a_user_error():
    sample = Sample(id="x", question="q", answers=["a"])
    with pytest.raises(MemFactoryError, match="sub_emm"):
        score_trajectories([sample], [Trajectory(sample=sample, answer="a")], k=1, default_metric="sub_emm")


# --------------------------------------------------------------------------- workflow on a real model


def test_evaluate_workflow_runs_k_paths_per_sample(tiny_backend):
    preset = load_preset(TINY_PRESET)
    samples = [
        Sample(id="a", question="Where does Mia live?", answers=["Quito"], context="Mia lives in Quito. " * 12),
        Sample(id="b", question="What is Tom's job?", answers=["chef"], context="Tom works as a chef."),
    ]
    seen = []
    results = evaluate_workflow(
        preset,
        samples,
        k=3,
        params=PARAMS,
        backend=tiny_backend,
        batch_size=1,
        on_progress=lambda done, total, finished: seen.append((done, total, [r.sample_id for r in finished])),
    )
    assert seen == [(1, 2, ["a"]), (2, 2, ["b"])]
    assert [r.sample_id for r in results] == ["a", "b"]
    for result in results:
        assert result.k == 3 and len(result.answers) == 3 and len(result.traces) == 3
        assert all(a.startswith("\\boxed{") for a in result.answers)  # the preset's answer prefix
        assert all(0.0 <= s <= 1.0 for s in result.scores)
        assert all(t > 0 for t in result.tokens) and all(p > 0 for p in result.prompt_tokens)
        assert result.latency_s > 0
        json.dumps(result.to_dict())  # JSON-friendly for samples.jsonl and the UI
    # the long context needs more chunks (memory updates) than the short one
    assert results[0].calls[0] > results[1].calls[0] >= 2
    assert "memory" in results[0].traces[0][0]


# --------------------------------------------------------------------------- resume


def test_rerun_skips_done_samples_and_redoes_only_the_missing(tmp_path, counting_backend):
    rows = make_rows([str(TINY_PRESET)], keep_chunk_cap=True)
    out = tmp_path / "ev"
    kwargs = {
        "out": out,
        "k": 2,
        "n": 3,
        "params": PARAMS,
        "batch_size": 1,
        "progress": False,
        "log": lambda _m: None,
        "backend_factory": lambda preset: counting_backend,
    }
    table, folder = run_eval(rows, ["eval_docqa"], **kwargs)
    first_prompts = counting_backend.prompts
    assert first_prompts > 0 and table.counts[rows[0].label]["eval_docqa"] == 3
    lines = (folder / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3

    counting_backend.prompts = counting_backend.calls = 0
    again, _ = run_eval(rows, ["eval_docqa"], **kwargs)
    assert counting_backend.calls == 0  # nothing left to do
    assert again.cells == table.cells

    # an interrupted run: the last sample's line was cut off half-way
    (folder / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    run_eval(rows, ["eval_docqa"], **kwargs)
    assert 0 < counting_backend.prompts < first_prompts  # one sample redone, not three
    done = ResultsStore(folder).records()
    assert sorted(r["sample_id"] for r in done) == sorted(json.loads(line)["sample_id"] for line in lines)


def test_resume_with_other_settings_is_refused(tmp_path, counting_backend):
    rows = make_rows([str(TINY_PRESET)], keep_chunk_cap=True)
    kwargs = {
        "out": tmp_path,
        "n": 1,
        "params": PARAMS,
        "progress": False,
        "backend_factory": lambda preset: counting_backend,
    }
    run_eval(rows, ["eval_docqa"], k=1, **kwargs)
    with pytest.raises(MemFactoryError, match="k=1"):
        run_eval(rows, ["eval_docqa"], k=2, **kwargs)


# --------------------------------------------------------------------------- protocols


def _memory_module(preset):
    from memfactory.agents.build import build_agent

    return build_agent(preset).modules["memory"]


def test_memagent_protocol_uses_memagents_prompts_caps_and_no_prefix():
    from memfactory.eval_protocols import MEMAGENT
    from memfactory.modules.recurrent import NO_MEMORY, UPDATE_TEMPLATE

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
    from memfactory.eval_protocols import MEMFACTORY

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


def test_metric_for_renames_through_the_protocol():
    from memfactory.eval_protocols import MEMAGENT

    hotpot = Sample(id="h", question="q", answers=["Paris"])
    qa = Sample(id="q", question="q", answers=["a"], meta={"ruler_task": "qa_1"})
    ruler = Sample(id="r", question="q", answers=["a"], meta={"metric": "string_match_all"})
    locomo = Sample(id="l", question="q", answers=["a"], meta={"metric": "f1"})
    names = [metric_for(s, "sub_em", MEMAGENT.metric_map) for s in (hotpot, qa, ruler, locomo)]
    assert names == ["memagent_sub_em", "memagent_sub_em", "memagent_string_match_all", "memagent_f1"]
    # scored the MemAgent way: against answers[0], no raw-text fallback
    samples = [Sample(id="x", question="q", answers=["New York City", "NYC"]), hotpot]
    trajectories = [
        Trajectory(sample=samples[0], answer="Therefore, the answer is NYC."),
        Trajectory(sample=samples[1], answer="Paris"),
    ]
    results = score_trajectories(samples, trajectories, 1, default_metric="sub_em", metric_map=MEMAGENT.metric_map)
    assert [r.scores for r in results] == [[0.0], [0.0]]
    assert [r.predictions for r in results] == [["NYC"], [None]]


def test_resume_under_another_protocol_is_refused(tmp_path, counting_backend):
    from memfactory.eval_protocols import MEMAGENT, MEMFACTORY

    rows = make_rows([str(TINY_PRESET)], keep_chunk_cap=True)
    kwargs = {
        "out": tmp_path,
        "n": 1,
        "k": 1,
        "params": PARAMS,
        "progress": False,
        "backend_factory": lambda preset: counting_backend,
    }
    table, _ = run_eval(rows, ["eval_docqa"], protocol=MEMFACTORY, default_metric="boxed_em", **kwargs)
    assert table.title.startswith("protocol memfactory: avg@1 (eval_docqa: boxed_em), temperature 1.0")
    assert table.markdown().splitlines()[0] == table.title
    assert (tmp_path / "table.md").read_text().startswith(table.title)
    with pytest.raises(MemFactoryError, match="--protocol memfactory, not --protocol memagent"):
        run_eval(rows, ["eval_docqa"], protocol=MEMAGENT, **kwargs)
    # a folder from before protocols existed is refused too
    manifest = json.loads((tmp_path / "eval.json").read_text())
    del manifest["protocol"]
    (tmp_path / "eval.json").write_text(json.dumps(manifest))
    with pytest.raises(MemFactoryError, match="no named protocol"):
        run_eval(rows, ["eval_docqa"], protocol=MEMFACTORY, default_metric="boxed_em", **kwargs)
