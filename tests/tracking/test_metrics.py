"""metrics.jsonl / samples.jsonl: live tailing, the cached reader, NaN safety, torn lines, truncation on resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch

from memfactory.tracking.metrics import MetricsWriter, RecordsCache, RunDir, read_metrics, read_records, truncate_after


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path / "20261129-000000-x-abcd").create()
    assert run.id == "20261129-000000-x-abcd"
    assert run.checkpoints.is_dir()
    assert run.preset_path.name == "preset.yaml" and run.metrics_path.name == "metrics.jsonl"
    assert run.samples_path.name == "samples.jsonl" and run.log_path.name == "stdout.log"
    assert run.swanlab_dir == run.path / "swanlog"


def test_records_are_strict_json_and_tailable_line_by_line(tmp_path):
    run = RunDir(tmp_path / "run")
    with MetricsWriter(run) as writer:
        writer.write(1, {"loss": float("nan"), "reward/mean": np.float32(0.5), "kl": torch.tensor(0.25), "n": 3})
        chunk = read_metrics(run.metrics_path)  # visible before close: flushed per line
        assert chunk.next_line == 1
        assert chunk.records[0]["loss"] is None and chunk.records[0]["reward/mean"] == 0.5
        assert chunk.records[0]["kl"] == 0.25 and chunk.records[0]["n"] == 3 and chunk.records[0]["step"] == 1
        writer.write(2, {"loss": float("inf")})
        writer.write(3, {"loss": 0.1})
        records, next_line = read_metrics(run.metrics_path, since_line=chunk.next_line)
        assert [r["step"] for r in records] == [2, 3] and next_line == 3
        assert records[0]["loss"] is None
    for line in run.metrics_path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN tokens


def test_half_written_last_line_is_not_returned_until_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    records, next_line = read_metrics(path)
    assert [r["step"] for r in records] == [1] and next_line == 1
    with path.open("a") as fh:
        fh.write('ss": 0.5}\n')
    records, next_line = read_metrics(path, since_line=next_line)
    assert records == [{"step": 2, "loss": 0.5}] and next_line == 2
    assert read_metrics(tmp_path / "missing.jsonl") == ([], 0)


def test_a_reader_in_another_process_sees_steps_while_they_are_written(tmp_path):
    run = RunDir(tmp_path / "live")
    writer = MetricsWriter(run)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\n"
                "from memfactory.tracking.metrics import read_metrics\n"
                "line, seen = 0, []\n"
                "deadline = time.time() + 30\n"
                "while len(seen) < 5 and time.time() < deadline:\n"
                "    records, line = read_metrics(sys.argv[1], line)\n"
                "    seen += [r['step'] for r in records]\n"
                "    time.sleep(0.01)\n"
                "print(seen)\n"
            ),
            str(run.metrics_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for step in range(5):
        writer.write(step, {"loss": 1.0 / (step + 1)})
        time.sleep(0.05)
    out, _ = reader.communicate(timeout=60)
    writer.close()
    assert out.strip() == "[0, 1, 2, 3, 4]"


def test_samples_keep_the_raw_group_rewards(tmp_path):
    run = RunDir(tmp_path / "s")
    with MetricsWriter(run) as writer:
        writer.write_samples(
            4,
            [{"question": "q", "answer": "a", "reward": 1.0}],
            group_rewards=[np.array([0.0, 1.0, 1.0]), [0.5, float("nan")]],
        )
    (record,) = read_metrics(run.samples_path).records
    assert record["step"] == 4 and record["rewards"] == [[0.0, 1.0, 1.0], [0.5, None]]
    assert record["samples"] == [{"question": "q", "answer": "a", "reward": 1.0}]


def test_truncate_after_on_resume_keeps_curves_continuous(tmp_path):
    run = RunDir(tmp_path / "r")
    writer = MetricsWriter(run)
    for step in range(1, 8):
        writer.write(step, {"loss": float(step)})
        writer.write_samples(step, [], group_rewards=[[step]])
    assert writer.truncate_after(4) == 6
    writer.write(5, {"loss": 50.0})
    writer.close()
    steps = [r["step"] for r in read_metrics(run.metrics_path).records]
    assert steps == [1, 2, 3, 4, 5]
    assert read_metrics(run.metrics_path).records[-1]["loss"] == 50.0
    assert [r["step"] for r in read_metrics(run.samples_path).records] == [1, 2, 3, 4]
    assert truncate_after(tmp_path / "absent.jsonl", 3) == 0


def test_reopening_after_a_crash_drops_the_torn_line(tmp_path):
    run = RunDir(tmp_path / "crash")
    run.path.mkdir()
    run.metrics_path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with MetricsWriter(run) as writer:
        writer.write(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(run.metrics_path).records] == [1, 2]
    assert len(run.metrics_path.read_text().splitlines()) == 2


def test_cached_reader_reads_only_what_was_appended_and_restarts_after_a_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_records(path) == []  # not written yet
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')  # half a line
    assert [r["step"] for r in read_records(path)] == [1, 2, 3]
    with path.open("a") as fh:  # the writer finishes the line and adds one more
        fh.write('ss": 0.5}\n{"step": 5}\n')
    records = read_records(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[3]["loss"] == 0.5
    records.append({"step": 99})  # callers get a copy: the cache is not changed through it
    assert len(read_records(path)) == 5
    path.write_text(json.dumps({"step": 1}) + "\n")  # truncated (a resume): read again from the start
    assert [r["step"] for r in read_records(path)] == [1]


def test_cached_reader_restarts_when_a_resume_replaced_the_file_and_it_outgrew_the_old_one(tmp_path):
    run = RunDir(tmp_path / "r")
    writer = MetricsWriter(run)
    for step in range(1, 9):
        writer.write(step, {"loss": float(step)})
    assert [r["step"] for r in read_records(run.metrics_path)] == list(range(1, 9))
    writer.truncate_after(4)  # resumed from step 4: a new file; before the next read it has grown past the old one
    for step in range(5, 13):
        writer.write(step, {"loss": 100.0 + step})
    writer.close()
    records = read_records(run.metrics_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["loss"] for r in records[4:]] == [100.0 + s for s in range(5, 13)]  # the resumed run's values


def test_cached_reader_remembers_a_bounded_number_of_files(tmp_path):
    cache = RecordsCache(limit=2)
    paths = [tmp_path / f"{i}.jsonl" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_text(json.dumps({"step": i}) + "\n")
        assert cache.read(path) == [{"step": i}]
    assert len(cache._files) == 2 and str(paths[0]) not in cache._files
    assert cache.read(paths[0]) == [{"step": 0}]  # forgotten files are simply read again
