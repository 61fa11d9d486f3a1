"""The hand-picked fuzz corpus (tests/fuzz/corpus/) and the big inputs built at test time.

Presets and data files are accepted or refused with a MemFactoryError naming the file; model
outputs go through every parser without an exception and, applied through the updater to a real
SQLite bank, change it only by the operations that were applied.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fuzz_harness import (
    SLOW_S,
    UpdateBank,
    _guarded,
    base_preset,
    big_data,
    big_outputs,
    big_presets,
    check_data_file,
    check_data_uri,
    check_output,
    check_preset_data,
    check_preset_file,
    corpus_files,
    read_output,
)

from memfactory.cli import main as cli_main
from memfactory.config import load_preset
from memfactory.envs.rewards import parse_verdict
from memfactory.errors import ConfigError
from memfactory.modules.memory_ops import Fact, parse_operations
from memfactory.modules.updater import UpdateRequest
from memfactory.text import strip_thinking
from memfactory.types import Generation, Sample, Trajectory

PRESETS = corpus_files("presets")
DATA = corpus_files("data")
OUTPUTS = corpus_files("outputs")
ACCEPTED_PRESETS = {"valid_minimal.yaml", "unicode_ok.yaml"}
ACCEPTED_DATA = {
    "memagent_valid.json", "memagent_unicode_ok.json", "memagent_index_huge.json", "jsonl_valid.jsonl",
    "ruler_valid_fwe_1024.json", "verl_valid.json", "locomo_valid.json", "locomo_only_adversarial.json",
    "locomo_session_number_huge.json",
}


def test_the_corpus_is_there_and_small() -> None:
    assert len(PRESETS) >= 30 and len(DATA) >= 60 and len(OUTPUTS) >= 50
    for path in PRESETS + DATA + OUTPUTS:
        assert path.stat().st_size < 16_384, f"{path} is big: build big inputs at test time instead"


def test_the_harness_catches_what_it_hunts(bank: UpdateBank) -> None:
    """A raw exception, or a refusal that does not name its file, counts as a traceback."""
    assert _guarded(lambda: {}["missing"]).kind == "traceback"
    assert _guarded(lambda: load_preset("/no/such/preset.yaml"), names="/no/such/preset.yaml").kind == "refused"
    assert _guarded(lambda: load_preset("/no/such/preset.yaml"), names="other.yaml").kind == "traceback"
    assert check_output("[{'op': 'ADD', 'text': 'x'}]").kind == "accepted"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_corpus_preset(path: Path) -> None:
    outcome = check_preset_file(path)
    assert outcome.ok, outcome.detail
    assert outcome.kind == ("accepted" if path.name in ACCEPTED_PRESETS else "refused"), outcome.detail


def test_presets_validate_cli_on_the_whole_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    """`memfactory presets validate` exits 0 or 2 with one paragraph, never a traceback."""
    for path in PRESETS:
        code = cli_main(["presets", "validate", str(path), "--no-startup-checks"])
        err = capsys.readouterr().err
        assert code == (0 if path.name in ACCEPTED_PRESETS else 2), (path.name, err)
        assert "Traceback" not in err and (code == 0 or str(path) in err)


def test_alias_bombs_and_cycles_are_refused_fast() -> None:
    for name, words in (("alias_bomb_unknown_key.yaml", "alias bomb"), ("alias_bomb_in_options.yaml", "alias bomb"),
                        ("alias_cycle.yaml", "cycle"), ("alias_cycle_root.yaml", "cycle")):
        began = time.monotonic()
        with pytest.raises(ConfigError, match=words):
            load_preset(Path(__file__).parent / "corpus" / "presets" / name)
        assert time.monotonic() - began < 2.0


def test_python_tags_are_refused_and_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("tag_python_apply.yaml", "tag_python_name.yaml", "tag_unknown.yaml"):
        with pytest.raises(ConfigError, match="could not determine a constructor"):
            load_preset(Path(__file__).parent / "corpus" / "presets" / name)
    assert list(tmp_path.iterdir()) == []


def test_an_override_on_a_preset_that_is_not_a_mapping() -> None:
    path = Path(__file__).parent / "corpus" / "presets" / "top_level_list.yaml"
    outcome = check_preset_file(path, ["trainer.lr=1e-4"])
    assert outcome.kind == "refused" and "expected a mapping at the top level" in outcome.detail


def test_names_no_file_system_takes() -> None:
    """Found by the fuzzer: a 10000-character model.path made presets validate raise OSError
    (ENAMETOOLONG) from Path.is_dir(); file arguments that long did the same in the loaders."""
    data = base_preset()
    data["model"]["path"] = "x" * 10_000
    data["env"]["eval"] = ["y" * 300 + ".json", "a\x00b"]
    outcome = check_preset_data(data)
    assert outcome.kind == "refused", outcome.detail
    for words in ("model.path: is 10000 bytes long", "env.eval.0: has a name longer than 255 bytes",
                  "env.eval.1: holds a NUL character"):
        assert words in outcome.detail
    for check, name in ((check_preset_file, "p" * 300 + ".yaml"), (check_data_file, "d" * 300 + ".json")):
        outcome = check(Path(name))
        assert outcome.kind == "refused", outcome.detail


def test_synthetic_uris_are_bounded() -> None:
    for uri, words in (("synthetic://docqa?n=1000000000", "between 1 and 100000"),
                       ("synthetic://hotpotqa?n=2&docs=99999999", "at most 25600"),
                       ("synthetic://fwe?n=1&length=99999999", "at most 1048576"),
                       ("synthetic://docqa?n=1&min_docs=-1", "docqa needs 1 <= min_docs <= max_docs <= 24"),
                       ("synthetic://locomo?n=-1", "between 1 and 10000"),
                       ("synthetic://locomo?n=1&sessions=1000000", "between 1 and 1000")):
        began = time.monotonic()
        outcome = check_data_uri(uri)
        assert outcome.kind == "refused" and words in outcome.detail, (uri, outcome.detail)
        assert time.monotonic() - began < 2.0


def test_big_presets(scratch: Path) -> None:
    outcomes = {path.name: check_preset_file(path) for path in big_presets(scratch)}
    for name, outcome in outcomes.items():
        assert outcome.ok, (name, outcome.detail)
    assert "nested too deeply" in outcomes["deep_lists_10k.yaml"].detail
    assert "nested too deeply" in outcomes["deep_maps_10k.yaml"].detail
    assert "deeper than 64 levels" in outcomes["deep_block_200.yaml"].detail
    assert "a preset is at most" in outcomes["over_size_limit.yaml"].detail
    assert outcomes["string_1m.yaml"].kind == "accepted"  # a long name is odd, not wrong
    assert outcomes["binary.yaml"].kind == "refused"


@pytest.mark.parametrize("path", DATA, ids=lambda p: p.name)
def test_corpus_data_file(path: Path) -> None:
    outcome = check_data_file(path)
    assert outcome.ok, outcome.detail
    assert outcome.kind == ("accepted" if path.name in ACCEPTED_DATA else "refused"), outcome.detail
    if "record_2" in path.name:
        assert "record 2" in outcome.detail


def test_data_check_cli_on_the_whole_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    """`memfactory data check FILE` exits 0 or 2 with one paragraph naming the file, never a traceback."""
    for path in DATA:
        code = cli_main(["data", "check", str(path)])
        captured = capsys.readouterr()
        assert code == (0 if path.name in ACCEPTED_DATA else 2), (path.name, captured.err)
        assert "Traceback" not in captured.err and (code == 0 or str(path) in captured.err)


def test_big_data_files(scratch: Path) -> None:
    outcomes = {path.name: check_data_file(path) for path in big_data(scratch)}
    for name, outcome in outcomes.items():
        assert outcome.ok, (name, outcome.detail)
    assert outcomes["strings_1m.json"].kind == outcomes["strings_1m.jsonl"].kind == "accepted"
    assert "nested too deeply" in outcomes["deep_100k.json"].detail
    assert "unreadable parquet file" in outcomes["csv_1m.parquet"].detail
    assert "not UTF-8" in outcomes["binary_1m.json"].detail
    assert "unrecognised record shape with fields ['1.5', 'x']" in outcomes["mixed_column_names.parquet"].detail


@pytest.mark.parametrize("path", OUTPUTS, ids=lambda p: p.name)
def test_corpus_output(path: Path, bank: UpdateBank) -> None:
    text = read_output(path)
    outcome = check_output(text)
    assert outcome.ok, outcome.detail
    applied = bank.apply(text)
    assert applied.ok, applied.detail


@pytest.mark.parametrize("index", range(len(big_outputs())))
def test_big_output(index: int, bank: UpdateBank) -> None:
    text = big_outputs()[index]
    outcome = check_output(text)
    assert outcome.ok, outcome.detail
    assert outcome.seconds < 6 * SLOW_S  # ~1-3 s on an idle core for ~25 parsers on 1M characters
    applied = bank.apply(text)
    assert applied.ok, applied.detail


def test_unparseable_outputs_leave_the_bank_row_for_row(bank: UpdateBank) -> None:
    pristine = bank.rows()
    for name in ("ops_only_prose.txt", "ops_empty.txt", "ops_unterminated_think.txt", "ops_all_none.txt",
                 "ops_unknown_id.txt", "ops_unknown_op.txt", "ops_add_empty_text.txt", "ops_big_int.txt",
                 "verdict_true.txt", "answer_boxed_unclosed.txt", "think_unterminated.txt"):
        outcome = bank.apply(read_output(Path(__file__).parent / "corpus" / "outputs" / name))
        assert outcome.kind == "accepted" and not outcome.changed_store, (name, outcome.detail)
        assert bank.rows() == pristine, name


def test_operation_dicts_of_the_wrong_kind_are_refused_whole(bank: UpdateBank) -> None:
    """Found by the fuzzer: these raised TypeError / OverflowError / UnicodeEncodeError from SQLite."""
    pristine = bank.rows()
    for ops in ([{"op": "ADD", "text": "x", "tags": 5}], [{"op": "ADD", "text": "x", "type": 10**30}],
                [{"op": "UPDATE", "id": "\udfff", "text": "x"}], [{"op": "ADD", "text": "x", "key": ["k"]}],
                [{"op": "ADD", "text": "fine"}, {"op": "DELETE", "id": "m0", "tags": 2.5}],
                [{"op": "ADD", "text": "bad \ud800"}]):
        result = bank.store.apply(ops, raise_on_error=False)
        assert not result.ok and result.error.startswith("operation "), (ops, result)
        assert bank.rows() == pristine, ops


def test_a_valid_update_does_change_the_bank(bank: UpdateBank) -> None:
    """The row comparison is not vacuous: applied operations show up, and the bank is restored."""
    pristine = bank.rows()
    text = read_output(Path(__file__).parent / "corpus" / "outputs" / "ops_valid.txt")
    ops, report = parse_operations(text, {"0": "m0", "1": "m1", "2": "m2"})
    assert report.parsed and [o.op for o in ops] == ["UPDATE", "DELETE", "ADD", "NONE"]
    related = [bank.store.get(f"m{i}") for i in range(3)]
    request = UpdateRequest(Trajectory(sample=Sample("s", "q", ["a"])), bank.store, [Fact("Ava moved")], related)
    out = bank.updater.apply_response(request, bank.updater.prompt(request), Generation(text=text), train=False)
    changed = bank.rows()
    bank.store.restore(bank.pristine)
    assert out.result.ok and out.result.updated == ["m0"] and out.result.deleted == ["m1"] and len(out.result.added) == 1
    texts = {row[2] for row in changed["memories"]}
    assert len(changed["memories"]) == len(pristine["memories"])
    assert {"Ava lives in Brevik", "Ava likes tea"} <= texts and "Ben has a cat called Pepper" not in texts
    assert len(changed["history"]) == len(pristine["history"]) + 3
    assert bank.rows() == pristine
    outcome = bank.apply(text)  # the harness's own bookkeeping agrees
    assert outcome.kind == "accepted" and not outcome.changed_store and bank.rows() == pristine


def test_parser_answers_on_corpus_outputs() -> None:
    def out(name: str) -> str:
        return read_output(Path(__file__).parent / "corpus" / "outputs" / name)

    assert parse_verdict(out("verdict_true.txt")) is True
    assert parse_verdict(out("verdict_false_lower.txt")) is False
    assert parse_verdict(out("verdict_after_think.txt")) is True
    assert parse_verdict(out("verdict_unterminated_think.txt")) is None
    assert parse_verdict(out("verdict_embedded_word.txt")) is None
    assert strip_thinking(out("think_unterminated.txt")) == ("", False)
    assert strip_thinking(out("think_nested.txt")) == ("visible", True)
    ops, report = parse_operations(out("ops_lone_surrogate.txt"), {"0": "m0"})
    assert report.parsed and all(o.text and o.text.encode("utf-8") for o in ops if o.op != "NONE")
    ops, report = parse_operations(out("ops_big_int.txt"), {"0": "m0"})
    assert [o.op for o in ops] == ["NONE"] or not report.parsed
