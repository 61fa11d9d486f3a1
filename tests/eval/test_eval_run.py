"""run_eval on a real tiny model: a rerun skips what is done, and a resume with other settings or another protocol is refused."""

from __future__ import annotations

import json

import pytest

from memfactory.backends.hf import HFBackend
from memfactory.errors import MemFactoryError
from memfactory.eval.protocols import MEMAGENT, MEMFACTORY
from memfactory.eval.results import ResultsStore
from memfactory.eval.run import run_eval
from memfactory.paths import presets_dir
from memfactory.targets import make_rows
from memfactory.types import SamplingParams

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


def test_resume_under_another_protocol_is_refused(tmp_path, counting_backend):
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
