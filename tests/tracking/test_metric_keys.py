"""Every metric name read anywhere is one the trainer writes (memfactory/tracking/metric_keys.py).

Readers (the web UI's figures and tabs, the CLI's commands, the session's log line) name metrics
only through ``metric_keys``; the names they use are checked against what a real two-step
training run writes to metrics.jsonl and samples.jsonl (plus the CUDA-only hardware fields, from
the hardware writer itself). A reader that hard-codes a metric name as a string literal fails too.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

from memfactory.cli import main
from memfactory.paths import presets_dir
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import read_records
from memfactory.trainer.hardware import to_metrics

ROOT = Path(__file__).resolve().parents[2]
MODULE = "memfactory.tracking.metric_keys"
# Where metric names are written; everything else in memfactory/ and webui/ is a reader.
WRITERS = {"memfactory/tracking/metric_keys.py", "memfactory/tracking/metrics.py", "memfactory/trainer/loop.py",
           "memfactory/trainer/update.py", "memfactory/trainer/step_metrics.py",
           "memfactory/trainer/hardware.py", "memfactory/trainer/rollout_engine.py"}
# Bare words that are metric names but also ordinary keys elsewhere (a trajectory summary's "rewards",
# a form's "lr"): not searched for as string literals.
GENERIC = {keys.STEP, keys.TIME, keys.LOSS, keys.KL, keys.LR, keys.GROUP_REWARDS, keys.TRAJECTORIES}


def _sources() -> dict[str, ast.Module]:
    files = [*sorted((ROOT / "memfactory").rglob("*.py")), *sorted((ROOT / "webui").rglob("*.py")), ROOT / "app.py"]
    return {str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8")) for path in files}


def _names_used(tree: ast.Module) -> set[str]:
    """The metric_keys names a module uses: ``alias.NAME`` for its module aliases, and names imported from it."""
    aliases, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "memfactory.tracking":
            aliases |= {a.asname or a.name for a in node.names if a.name == "metric_keys"}
        elif isinstance(node, ast.ImportFrom) and node.module == MODULE:
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == MODULE and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.add(node.attr)
    return used


def _readers() -> dict[str, set[str]]:
    return {path: names for path, tree in _sources().items() if path not in WRITERS and (names := _names_used(tree))}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> set[str]:
    """Every key a real two-step run writes (metrics.jsonl and samples.jsonl), plus the CUDA hardware keys."""
    root = tmp_path_factory.mktemp("written")
    runs = root / "runs"
    code = main(["train", str(presets_dir() / "tiny_test.yaml"), "--runs-dir", str(runs), "--run-id", "keys",
                 "--no-progress", "--set", "trainer.steps=2"])
    assert code == 0
    names = set()
    for file in ("metrics.jsonl", "samples.jsonl"):
        records = read_records(runs / "keys" / file)
        assert [r[keys.STEP] for r in records] == [1, 2]
        names |= {key for record in records for key in record}
    names |= set(to_metrics([[1.0] * len(keys.HW_FIELDS)], cuda=True))  # what a CUDA rank writes
    return names


def _is_written(value: object, written: set[str]) -> bool:
    if isinstance(value, str):
        if value.endswith("/"):  # a prefix: some written key under it
            return any(key.startswith(value) and key not in keys.REWARD_SUMMARIES for key in written)
        if value in keys.HW_FIELDS:  # a per-rank hardware field: written as hw/rank0/<field>
            return keys.hw_key(0, value) in written
        return value in written
    if isinstance(value, tuple):
        return all(_is_written(item, written) for item in value)
    if isinstance(value, re.Pattern):
        return any(value.fullmatch(key) for key in written)
    return callable(value)  # hw_key / reward_part build names from the parts checked above


def test_the_readers_use_the_constants():
    readers = _readers()
    for reader in ("webui/plots.py", "webui/train/samples.py", "memfactory/commands/runs.py",
                   "memfactory/commands/demo.py", "memfactory/trainer/session.py", "memfactory/tracking/view.py"):
        assert readers.get(reader), f"{reader} reads no metric through memfactory.tracking.metric_keys"
    unknown = {(path, name) for path, names in readers.items() for name in names if not hasattr(keys, name)}
    assert not unknown


def test_every_name_read_anywhere_is_written(written):
    never = sorted({(path, name, getattr(keys, name)) for path, names in _readers().items() for name in names
                    if not _is_written(getattr(keys, name), written)}, key=str)
    assert not never, f"read but never written by the trainer: {never}"


def test_the_step_metrics_have_their_constants(written):
    """What the trainer writes is named in metric_keys (dynamic parts by their prefix or pattern)."""
    constants = {v for v in vars(keys).values() if isinstance(v, str)}
    prefixes = tuple(v for v in constants if v.endswith("/"))
    loose = sorted(key for key in written
                   if key not in constants and not key.startswith(prefixes) and not keys.HW_RANK_KEY.fullmatch(key))
    assert not loose, f"written without a constant in metric_keys: {loose}"


def test_no_reader_spells_a_metric_name_itself():
    names = {v for v in vars(keys).values() if isinstance(v, str) and v not in GENERIC and not v.endswith("/")}
    names |= {keys.hw_key(0, field) for field in keys.HW_FIELDS}
    spelled = []
    for path, tree in _sources().items():
        if path in WRITERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                spelled.append((path, node.lineno, node.value))
    assert not spelled, f"metric names spelled out instead of read from metric_keys: {spelled}"


def test_the_helpers_build_the_written_shapes():
    assert keys.hw_key(1, keys.HW_RSS) == "hw/rank1/rss_gib" and keys.HW_RANK_KEY.fullmatch(keys.hw_key(3, keys.HW_CPU))
    assert keys.reward_part("sub_em") == "reward/sub_em"
    with pytest.raises(ValueError, match="unknown hardware field"):
        keys.hw_key(0, "vram")
    metrics = to_metrics([[1.0, 2.0, 3.0, math.nan, math.nan, math.nan]], cuda=False)
    assert set(metrics) == {keys.hw_key(0, f) for f in (keys.HW_RSS, keys.HW_PEAK_RSS, keys.HW_CPU)} | {
        keys.HW_PEAK_GIB}
