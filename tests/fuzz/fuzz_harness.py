"""The fuzz corpus and its checkers, shared by ``tests/fuzz/`` and ``bench/fuzz_report.py``.

Three kinds of input reach MemFactory from outside: presets (YAML), data files (MemAgent
JSON/JSONL/parquet, RULER, verl, LoCoMo, ``synthetic://`` URIs) and model outputs (memory
updates, operation JSON, extracted facts, rerank id lists and citations, judge verdicts, boxed
answers, think blocks). The project rule for each:

* presets and data: accepted, or refused with a ``MemFactoryError`` (``ConfigError`` /
  ``DataError``) that names the file; never another exception;
* model outputs: every parser returns its "no parse" value (None, [], an empty report) on any
  string and never raises;
* memory updates: an output the updater cannot apply (unparseable, no operation, a failed batch)
  leaves the SQLite bank row-for-row as it was ("0 changed stores").

``check_*`` run one input through every entry point of its kind and return an ``Outcome``; the
``gen_*`` functions build seeded random inputs (the bench draws thousands, the hypothesis tests
drive them through ``st.randoms``). Big inputs (1M-character strings, 10k-level nesting, binary
blobs) are built at run time by ``big_*``, never committed.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sqlite3
import string
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memfactory.agents.banks import cited_ids
from memfactory.config import Preset, load_preset, parse_preset
from memfactory.data.locomo import looks_like_locomo
from memfactory.data.sources import load_locomo, load_samples
from memfactory.envs.answer_metrics import boxed_em, extract_boxed, extract_prediction, memagent_boxed, memagent_extract
from memfactory.envs.build import build_rewards
from memfactory.envs.rewards import parse_verdict
from memfactory.errors import MemFactoryError
from memfactory.json_repair import parse_json
from memfactory.memory.embed import get_embedder
from memfactory.memory.ops import OPS, Operation
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import lines_as_facts
from memfactory.modules.memory_ops import Fact, parse_facts, parse_id_list, parse_operations
from memfactory.modules.updater import NaiveUpdater, UpdaterConfig, UpdateRequest
from memfactory.preflight import check_preflight
from memfactory.registry import REGISTRY
from memfactory.text import strip_thinking
from memfactory.types import Generation, Sample, Trajectory

CORPUS = Path(__file__).resolve().parent / "corpus"
SLOW_S = 10.0  # one input through every entry point of its kind taking longer is reported (an unbounded bomb)


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """``accepted`` / ``refused`` (a clear MemFactoryError) / ``traceback`` (anything else, or an
    error that does not name its file); ``changed_store`` only for memory updates."""

    kind: str
    detail: str = ""
    changed_store: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No traceback and no changed store (time is reported apart: it depends on the machine's load)."""
        return self.kind != "traceback" and not self.changed_store


@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    refused: int = 0
    tracebacks: list[str] = field(default_factory=list)
    changed_stores: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)

    def add(self, label: str, outcome: Outcome) -> None:
        self.tried += 1
        if outcome.kind == "traceback":
            self.tracebacks.append(f"{label}: {outcome.detail}")
        elif outcome.kind == "refused":
            self.refused += 1
        else:
            self.accepted += 1
        if outcome.changed_store:
            self.changed_stores.append(f"{label}: {outcome.detail}")
        if outcome.seconds >= SLOW_S:
            self.slow.append(f"{label}: {outcome.seconds:.1f}s")

    def line(self) -> str:
        return (
            f"{self.tried} inputs tried, {len(self.tracebacks)} tracebacks, {len(self.changed_stores)} changed stores "
            f"({self.accepted} accepted, {self.refused} refused with a clear error, {len(self.slow)} over {SLOW_S:g}s)"
        )


def _guarded(fn: Callable[[], Any], *, names: str | None = None) -> Outcome:
    """Run ``fn``: MemFactoryError is a refusal (it must mention ``names`` when given); anything
    else that escapes — RecursionError, KeyError, UnicodeError, an AssertionError of a contract —
    is a traceback."""
    began = time.perf_counter()
    try:
        fn()
    except MemFactoryError as exc:
        seconds = time.perf_counter() - began
        message = str(exc)
        if names is not None and names not in message:
            return Outcome("traceback", f"refusal does not name {names!r}: {message[:300]}", seconds=seconds)
        return Outcome("refused", message[:300], seconds=seconds)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return Outcome("traceback", f"{type(exc).__name__}: {str(exc)[:200]} | {''.join(tb[-3:])[-600:]}",
                       seconds=time.perf_counter() - began)
    return Outcome("accepted", seconds=time.perf_counter() - began)


# --------------------------------------------------------------------------- presets


def _check_accepted_preset(preset: Preset, source: str) -> None:
    """What an accepted preset must survive next: ``presets show`` (YAML dump and a reload) and
    ``presets validate``'s start-up checks (model path, data files, judge; no model is loaded)."""
    assert isinstance(preset, Preset)
    text = preset.to_yaml()
    text.encode("utf-8")
    again = parse_preset(yaml.safe_load(text), "<round trip>")
    # The dump leaves out None values (an option set to null reloads as its default): equal means
    # equal after that, and every component's options resolve to the same settings.
    assert again.model_dump(exclude_none=True) == preset.model_dump(exclude_none=True), "preset changed on reload"
    for slot, spec in preset.modules.items():
        assert (again.component_options(again.modules[slot], "module").model_dump()
                == preset.component_options(spec, "module").model_dump()), f"modules.{slot} changed on reload"
    assert (again.component_options(again.env, "env").model_dump()
            == preset.component_options(preset.env, "env").model_dump()), "env options changed on reload"
    agent = REGISTRY.get("agent", preset.agent).config
    assert (agent.model_validate(again.agent_options).model_dump()
            == agent.model_validate(preset.agent_options).model_dump()), "agent_options changed on reload"
    check_preflight(preset, source)
    _templates_format(preset)


class _AnyName(dict):
    def __missing__(self, key: str) -> str:
        return "x"


def _templates_format(preset: Preset) -> None:
    """Every prompt template an accepted preset sets can be filled in (what each rollout does)."""
    options = [preset.component_options(spec, "module") for spec in preset.modules.values()]
    options.append(REGISTRY.get("agent", preset.agent).config.model_validate(preset.agent_options))
    for opts in options:
        for name, value in opts.model_dump().items():
            if "template" in name and isinstance(value, str):
                value.format_map(_AnyName())


def check_preset_file(path: Path, overrides: list[str] | None = None) -> Outcome:
    """``load_preset`` (what ``presets validate/show`` and ``train`` call) on one YAML file."""
    return _guarded(lambda: _check_accepted_preset(load_preset(path, overrides), str(path)), names=str(path))


def check_preset_data(data: Any) -> Outcome:
    """``parse_preset`` (what the web UI's Assemble tab calls) on an already-parsed value."""
    return _guarded(lambda: _check_accepted_preset(parse_preset(data, "<fuzz>"), "<fuzz>"), names="<fuzz>")


def base_preset() -> dict[str, Any]:
    """A valid preset exercising every section (schema only: no model is loaded)."""
    return {
        "name": "fuzz",
        "description": "fuzz base",
        "agent": "memagent",
        "modules": {"memory": {"type": "recurrent", "chunk_tokens": 64, "memory_tokens": 32, "max_chunks": 4}},
        "agent_options": {},
        "model": {"backend": "hf", "path": "tiny://qwen3-mini", "dtype": "float32", "options": {}},
        "env": {"type": "long_context", "data": "synthetic://docqa?n=4", "eval": ["eval_docqa"]},
        "rewards": {"sub_em": 1.0, "format": 0.1},
        "trainer": {"steps": 3, "group_size": 4, "batch_size": 2, "lr": 1e-3, "stop": ["}"],
                    "lora": {"r": 8, "alpha": 16}, "rollout": {"engine": "policy"}},
        "logging": {"swanlab": "disabled"},
    }


# --------------------------------------------------------------------------- data files


def _check_samples(samples: Any) -> None:
    assert isinstance(samples, list) and samples, "a loader returned no samples without an error"
    for sample in samples:
        assert isinstance(sample, Sample)
        assert isinstance(sample.question, str) and isinstance(sample.context, str)
        assert isinstance(sample.answers, list) and all(isinstance(a, str) for a in sample.answers)
        (sample.question + sample.context + "".join(sample.answers)).encode("utf-8")  # writable as UTF-8


def check_data_file(path: Path) -> Outcome:
    """Every loader a data file can reach: MemAgent/RULER/verl samples and, for .json, LoCoMo and
    its sniffer. The kind is that of the loader ``memfactory data check`` picks (LoCoMo when
    ``looks_like_locomo``); the other loader must refuse cleanly too."""
    memagent = _guarded(lambda: _check_samples(load_samples(path)), names=str(path))
    if path.suffix.lower() != ".json":
        return memagent
    locomo = _guarded(lambda: _check_samples(load_locomo(path, exclude_categories=[])), names=str(path))
    sniffed: dict[str, bool] = {}

    def sniff() -> None:
        sniffed["locomo"] = looks_like_locomo(path)
        assert isinstance(sniffed["locomo"], bool)

    sniffing = _guarded(sniff)
    outcomes = [memagent, locomo, sniffing]
    broken = [o for o in outcomes if o.kind == "traceback"]
    if broken:
        return broken[0]
    routed = locomo if sniffed.get("locomo") else memagent
    return Outcome(routed.kind, routed.detail, seconds=sum(o.seconds for o in outcomes))


def check_data_uri(uri: str) -> Outcome:
    def run() -> None:
        if uri.startswith("synthetic://locomo"):
            _check_samples(load_locomo(uri))
        else:
            _check_samples(load_samples(uri))

    return _guarded(run, names=uri)


def _worst(outcomes: list[Outcome]) -> Outcome:
    for kind in ("traceback", "refused", "accepted"):
        for outcome in outcomes:
            if outcome.kind == kind:
                return Outcome(kind, outcome.detail, any(o.changed_store for o in outcomes),
                               sum(o.seconds for o in outcomes))
    return Outcome("accepted")


# --------------------------------------------------------------------------- model outputs

ID_MAP = {"0": "m0", "1": "m1", "2": "m2"}
VALID_IDS = ["0", "1", "2"]
GOLDS = ["Paris", "Paris, France"]
_REWARDS = [name for name in REGISTRY.names("reward") if name != "llm_judge"]


def _parser_contracts(text: str) -> None:
    """Every parser of model output on ``text``: no exception, and each returns its documented type."""
    value, report = parse_json(text)
    assert isinstance(report.parsed, bool) and (report.parsed or value is None)
    facts, _ = parse_facts(text, max_facts=8)
    assert len(facts) <= 8 and all(isinstance(f, Fact) and f.value and f.value.encode("utf-8") for f in facts)
    ops, _ = parse_operations(text, ID_MAP, max_ops=8)
    assert len(ops) <= 8
    for op in ops:
        assert op.op in OPS
        if op.op in ("UPDATE", "DELETE"):
            assert op.id in ID_MAP.values()
        if op.op in ("ADD", "UPDATE"):
            assert isinstance(op.text, str) and op.text.strip()
            op.text.encode("utf-8")
    ids, _ = parse_id_list(text, VALID_IDS, limit=2)
    assert ids is None or (len(ids) <= 2 and len(set(ids)) == len(ids) and set(ids) <= set(VALID_IDS))
    assert parse_verdict(text) in (True, False, None)
    for mode in ("auto", "boxed", "answer_is", "raw"):
        prediction = extract_prediction(text, mode)  # type: ignore[arg-type]
        assert prediction is None or isinstance(prediction, str)
    for extract in (extract_boxed, memagent_boxed, memagent_extract):
        found = extract(text)
        assert found is None or isinstance(found, str)
    assert 0.0 <= boxed_em(text, GOLDS) <= 1.0
    visible, terminated = strip_thinking(text)
    assert isinstance(visible, str) and isinstance(terminated, bool)
    lines = lines_as_facts(text, 8)  # the extractor's fallback: these facts may be ADDed to the bank
    assert len(lines) <= 8 and all(isinstance(f, Fact) and f.value.encode("utf-8") for f in lines)
    cited = cited_ids(visible, 3)
    assert cited is None or set(cited) <= set(VALID_IDS)
    trajectory = Trajectory(sample=Sample("fuzz", "Where is Paris?", list(GOLDS)), answer=text)
    for name, reward in build_rewards(dict.fromkeys(_REWARDS, 1.0)).items():
        (score,) = reward.score([trajectory])
        assert math.isfinite(score) and 0.0 <= score <= 1.0, f"{name} scored {score}"


def check_output(text: str) -> Outcome:
    return _guarded(lambda: _parser_contracts(text))


class UpdateBank:
    """A real SQLite memory bank (hashing embedder) with three memories, and the updater's real
    ``apply_response`` path: fuzzed outputs are applied to it, and every output that applies no
    operation must leave it row-for-row unchanged. After an output that did change it, the bank
    is restored from its pristine snapshot."""

    MEMORIES = ("Ava lives in Tholand", "Ben has a cat called Pepper", "Ava likes tacos")

    def __init__(self, folder: Path):
        self.path = folder / "fuzz_bank.db"
        self.store = MemoryStore(self.path, embedder=get_embedder("hashing"))
        self.store.apply([Operation("ADD", id=f"m{i}", text=t) for i, t in enumerate(self.MEMORIES)])
        self.pristine = self.store.snapshot()
        self.updater = NaiveUpdater(UpdaterConfig(max_ops=8))
        self.reader = sqlite3.connect(self.path)

    def close(self) -> None:
        self.reader.close()
        self.store.close()
        self.pristine.close()

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        tables = [r[0] for r in self.reader.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(self.reader.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}

    def apply(self, text: str) -> Outcome:
        before = self.rows()
        holder: dict[str, Any] = {}

        def run() -> None:
            related = [self.store.get(f"m{i}") for i in range(3)]
            request = UpdateRequest(Trajectory(sample=Sample("fuzz", "q", ["a"])), self.store,
                                    [Fact("Ava moved to Brevik")], related, date="8 May 2023")
            prompt = self.updater.prompt(request)
            holder["out"] = self.updater.apply_response(request, prompt, Generation(text=text), train=False)

        outcome = _guarded(run)
        after = self.rows()
        out = holder.get("out")
        applied = out is not None and out.result.ok and any(o.op != "NONE" for o in out.operations)
        if before != after:
            if not applied:
                outcome.changed_store = True
                why = "unparsed" if out is None or not out.report.parsed else "no operation applied"
                outcome.detail = f"bank changed although {why}: {text[:120]!r}"
            elif len(after["memories"]) != len(before["memories"]) + len(out.result.added) - len(out.result.deleted):
                outcome.changed_store = True
                outcome.detail = f"bank changed by more than the applied operations: {text[:120]!r}"
            self.store.restore(self.pristine)
        elif applied:
            outcome.changed_store = True
            outcome.detail = f"operations reported as applied but the bank is unchanged: {text[:120]!r}"
        return outcome


    def apply_dicts(self, ops: list[Any]) -> Outcome:
        """``MemoryStore.apply`` on operation dicts straight from a model (``Operation.from_dict``):
        a bad batch comes back ``ok=False`` (or a MemFactoryError) and leaves the bank unchanged."""
        before = self.rows()
        holder: dict[str, Any] = {}
        outcome = _guarded(lambda: holder.update(result=self.store.apply(ops, raise_on_error=False)))
        after = self.rows()
        result = holder.get("result")
        if before != after:
            if result is None or not result.ok:
                outcome.changed_store = True
                outcome.detail = f"a refused batch changed the bank: {repr(ops)[:160]}"
            self.store.restore(self.pristine)
        return outcome


def gen_op_dicts(rng: random.Random) -> list[Any]:
    """A batch of operation dicts with any field of any kind (what a model's JSON can hold)."""
    ops: list[Any] = []
    for _ in range(rng.randrange(1, 4)):
        op: dict[Any, Any] = {rng.choice(["op", "op", "event"]): rng.choice(
            ["ADD", "UPDATE", "DELETE", "NONE", "add", "x", None, 5])}
        for key in ("id", "text", "scope", "key", "value", "type", "tags"):
            if rng.random() < 0.5:
                op[key] = rng.choice([gen_weird(rng), "m0", "m1", "m2", "some text", ["tag"]])
        if rng.random() < 0.1:
            op[gen_key(rng)] = gen_weird(rng)
        ops.append(op if rng.random() < 0.95 else gen_weird(rng))
    return ops


# --------------------------------------------------------------------------- corpus


def corpus_files(kind: str) -> list[Path]:
    return sorted(p for p in (CORPUS / kind).iterdir() if p.is_file())


def read_output(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def big_presets(folder: Path) -> list[Path]:
    """Presets too big to commit: 10k-level nesting (lists and maps), a 1M-character string, a file
    over the size limit, random binary."""
    head = 'name: fuzz\nagent: direct\nenv: {type: long_context, data: "synthetic://docqa?n=4"}\n'
    files = {
        "deep_lists_10k.yaml": head + "agent_options: {x: " + "[" * 10_000 + "]" * 10_000 + "}\n",
        "deep_maps_10k.yaml": head + "agent_options: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
        "deep_block_200.yaml": head + "agent_options:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)) + " " * 200 + "v: 1\n",
        "string_1m.yaml": head.replace("name: fuzz", "name: " + "n" * 1_000_000),
        "over_size_limit.yaml": head + "description: " + "d" * (5 * 1024 * 1024) + "\n",
    }
    out = []
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        out.append(folder / name)
    (folder / "binary.yaml").write_bytes(random.Random(0).randbytes(4096))
    out.append(folder / "binary.yaml")
    return out


def big_data(folder: Path) -> list[Path]:
    """Data files too big to commit: 1M-character strings, 100k-level nesting, random binary,
    a 1 MB CSV named .parquet."""
    good = {"context": "c" * 1_000_000, "input": "q" * 1_000_000, "answers": ["a" * 1_000_000], "index": 0}
    files: dict[str, str | bytes] = {
        "strings_1m.json": json.dumps([good]),
        "strings_1m.jsonl": json.dumps(good) + "\n",
        "key_1m.json": json.dumps([{"k" * 1_000_000: 1}]),
        "deep_100k.json": "[" * 100_000 + "]" * 100_000,
        "deep_100k.jsonl": '{"a": ' * 100_000 + "1" + "}" * 100_000 + "\n",
        "binary_1m.json": random.Random(1).randbytes(1_000_000),
        "binary_1m.parquet": random.Random(2).randbytes(1_000_000),
        "csv_1m.parquet": "context,input,answers\n" + "x,q,a\n" * 170_000,
    }
    out = []
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        out.append(path)
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns about the mixed column names: the point of the file
        pd.DataFrame({1.5: [1], "x": ["y"]}).to_parquet(folder / "mixed_column_names.parquet")
    out.append(folder / "mixed_column_names.parquet")
    conv = json.loads((CORPUS / "data" / "locomo_valid.json").read_text(encoding="utf-8"))
    conv[0]["conversation"]["session_1"][0]["text"] = "t" * 1_000_000
    (folder / "locomo_turn_1m.json").write_text(json.dumps(conv), encoding="utf-8")
    out.append(folder / "locomo_turn_1m.json")
    return out


def big_outputs() -> list[str]:
    rng = random.Random(3)
    return [
        "x" * 1_000_000,
        "[" * 200_000,
        "[" * 50_000 + "]" * 50_000,
        '{"op": "ADD", "text": ' * 20_000,
        "\\boxed{" * 100_000,
        "the answer is " * 70_000,
        "<think>" * 100_000,
        "```json\n" * 100_000,
        "[" + ",".join(["0"] * 200_000) + "]",
        '[{"op": "ADD", "text": "' + "m" * 1_000_000 + '"}]',
        rng.randbytes(1_000_000).decode("utf-8", "replace"),
        "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(200_000)).encode("utf-8", "replace").decode("utf-8"),
    ]


# --------------------------------------------------------------------------- generators (seeded)

_UNICODE = ["", " ", "é", "東京", "🦄", "\u202e", "\u200b", "\x00", "\ufeff", "\ud800", "\udfff", "ẑ̸̢", "\n", "\t", '"', "'",
            "\\", "{", "}", "[", "]", "<think>", "</think>", "\\boxed{", "the answer is", "True", "False", "```json\n", "```",
            "{memory:{chunk}}", "{question!x}", "{memories:d}", "{0}", "{}", "{chunk.__class__}", "{{"]


def gen_string(rng: random.Random, max_len: int = 40) -> str:
    parts = []
    for _ in range(rng.randrange(0, 6)):
        roll = rng.random()
        if roll < 0.4:
            parts.append(rng.choice(_UNICODE))
        elif roll < 0.8:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randrange(0, max_len))))
        else:
            parts.append("".join(chr(rng.randrange(0, 0x10FFFF)) for _ in range(rng.randrange(1, 6))))
    return "".join(parts)


def gen_weird(rng: random.Random, depth: int = 0) -> Any:
    """A value of a wrong or extreme kind: huge/negative/non-finite numbers, odd strings, deep nests."""
    roll = rng.randrange(22)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice([True, False])
    if roll == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**300])
    if roll == 3:
        return rng.choice([math.inf, -math.inf, math.nan, 1e308, -0.0, 5e-324, 0.5, 1.5])
    if roll in (4, 5, 6):
        return gen_string(rng)
    if roll == 7:
        return "x" * rng.choice([0, 1, 1000, 100_000])
    if roll == 8:
        nest: Any = rng.choice([1, "x", None])
        for _ in range(rng.choice([2, 50, 100, 200])):  # deeper nests: big_* (copy.deepcopy recurses)
            nest = [nest] if rng.random() < 0.5 else {"k": nest}
        return nest
    if roll in (9, 10) and depth < 3:
        return [gen_weird(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if roll in (11, 12) and depth < 3:
        return {gen_key(rng): gen_weird(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    if roll == 13:
        return rng.choice(["synthetic://docqa?n=" + str(rng.choice([-1, 0, 10**9, 3])), "synthetic://locomo?n=2",
                           "synthetic://nope", "/no/such/file.json", "tiny://nope", "http://[::1", "~", ".", ""])
    return rng.choice([1, 2.5, "sub_em", "recurrent", "direct", "long_context", [1, 2], {}, [], "None", "null", "1e999"])


def gen_key(rng: random.Random) -> Any:
    return rng.choice([gen_string(rng, 8), "type", "steps", "lr", "data", "options", "eval", 1, 2.5, None, True, "🦄",
                       "update_template", "answer_template", "memory_init", "truncate"])


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if len(prefix) > 20:  # edits reach into deep nests only near their top
        return
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*prefix, i))


def mutate(rng: random.Random, data: Any, edits: int) -> Any:
    """``data`` with ``edits`` random edits: a value replaced by a weird one, a key deleted, an
    unknown key added, a container replaced by a scalar."""
    data = copy.deepcopy(data)
    for _ in range(edits):
        path = rng.choice(list(_paths(data)))
        if not path:
            if rng.random() < 0.05:
                return gen_weird(rng)
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        roll = rng.random()
        if roll < 0.6:
            parent[last] = gen_weird(rng)
        elif roll < 0.8 and isinstance(parent, dict):
            del parent[last]
        elif isinstance(parent, dict):
            parent[gen_key(rng)] = gen_weird(rng)
        else:
            parent[last] = gen_weird(rng)
    return data


def gen_preset(rng: random.Random) -> Any:
    return mutate(rng, base_preset(), rng.randrange(1, 5))


def gen_preset_text(rng: random.Random) -> str:
    """YAML text: a mutated preset dumped, then maybe corrupted, or given tags/anchors/aliases."""
    try:
        text = yaml.safe_dump(gen_preset(rng), allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError, RecursionError):
        text = yaml.safe_dump(base_preset(), sort_keys=False)
    roll = rng.random()
    if roll < 0.3:
        chars = list(text)
        for _ in range(rng.randrange(1, 8)):
            pos = rng.randrange(len(chars) + 1)
            action = rng.random()
            if action < 0.4 and chars:
                del chars[min(pos, len(chars) - 1)]
            else:
                chars.insert(pos, rng.choice(list(":-[]{}&*!|>'\"#%@`,?\n\t ") + ["\x00", "é", "\ud800"]))
        text = "".join(chars)
    elif roll < 0.5:
        tag = rng.choice(["!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!set {a}", "!custom x",
                          "!!timestamp 2001-12-14", "!!float nan", "!!int 0x" + "f" * 40, "&a [*a]", "!!str", "!!map {}"])
        text += f"{gen_string(rng, 6) or 'k'}: {tag}\n"
    elif roll < 0.6:
        levels = rng.randrange(2, 12)
        width = rng.randrange(2, 12)
        text += "bomb:\n  l0: &l0 [lol, lol]\n" + "".join(
            f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n" for i in range(1, levels))
        if rng.random() < 0.5:
            text = text.replace("bomb:\n", "agent_options:\n  x: *l1\nbomb:\n", 1) if levels > 1 else text
    return text


def _record_templates() -> dict[str, Any]:
    return {
        "hotpotqa": {"context": "Document 1:\nParis is in France.", "input": "Where is Paris?", "answers": ["France"],
                     "num_docs": 1, "index": 0},
        "ruler": {"index": 0, "input": "q", "context": "a b c", "outputs": ["a"], "answer_prefix": "A:", "length": 1024},
        "verl": {"context": "c", "prompt": [{"role": "user", "content": "q?"}], "reward_model": {"ground_truth": ["a"]},
                 "extra_info": {"index": 0, "question": "q?", "num_docs": 1}, "data_source": "hotpotqa"},
        "locomo": json.loads((CORPUS / "data" / "locomo_valid.json").read_text(encoding="utf-8"))[0],
    }


def gen_data_file(rng: random.Random, folder: Path, index: int) -> Path:
    """A data file: mutated records of one shape as .json/.jsonl/.parquet, corrupted text, or bytes."""
    templates = _record_templates()
    shape = rng.choice(list(templates))
    records: Any = [mutate(rng, templates[shape], rng.randrange(0, 4)) for _ in range(rng.randrange(1, 4))]
    if rng.random() < 0.1:
        records = mutate(rng, records, 1)
    suffix = rng.choice([".json", ".json", ".jsonl", ".parquet"])
    path = folder / f"gen_{index}{suffix}"
    roll = rng.random()
    if roll < 0.08:
        path.write_bytes(rng.randbytes(rng.randrange(0, 2048)))
        return path
    try:
        if suffix == ".parquet" and roll < 0.7:
            import warnings

            import pandas as pd

            with warnings.catch_warnings():  # mixed-type column names: exactly the kind of file we want
                warnings.simplefilter("ignore")
                pd.DataFrame(records if isinstance(records, list) else [records]).to_parquet(path)
            return path
        if suffix == ".jsonl" and isinstance(records, list):
            text = "\n".join(json.dumps(r, ensure_ascii=rng.random() < 0.5) for r in records) + "\n"
        else:
            text = json.dumps(records, ensure_ascii=rng.random() < 0.5)
    except Exception:  # noqa: BLE001 - records pandas/json cannot write: write some JSON anyway
        text = json.dumps(templates[shape])
    if rng.random() < 0.15:
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(["", "}", "]]", "\x00", "NaN", "\ud800"])
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


def gen_uri(rng: random.Random) -> str:
    kind = rng.choice(["docqa", "hotpotqa", "fwe", "locomo", "nope", ""])
    params = {"n": rng.choice(["1", "2", "0", "-3", "x", "1e3", "9" * 30, "100001", "", "1000000000"]),
              "seed": rng.choice(["0", "-1", "s"]),
              rng.choice(["docs", "length", "min_docs", "max_docs", "sessions", "zz"]):
                  rng.choice(["1", "2", "64", "-1", "99999999", "x"])}
    if kind == "fwe":  # its default (64 samples of 16k tokens) takes seconds: keep generated sets small
        params["length"] = rng.choice(["64", "128", "-1", "99999999", "x"])
    query = "&".join(f"{k}={v}" for k, v in params.items() if k == "n" or rng.random() < 0.8)
    return f"synthetic://{kind}?{query}"


def gen_output(rng: random.Random) -> str:
    """A model output: operation/fact/id JSON (valid or not), verdicts, boxed answers, think blocks,
    wrapped in prose, fences and truncation, or plain random text."""
    roll = rng.random()
    if roll < 0.15:
        return gen_string(rng, 80)
    if roll < 0.55:
        ops = []
        for _ in range(rng.randrange(0, 5)):
            op: dict[str, Any] = {rng.choice(["op", "op", "event", "action", "OP"]): rng.choice(
                ["ADD", "UPDATE", "DELETE", "NONE", "add", "NOOP", "REMOVE", "MERGE", "", None, 5])}
            if rng.random() < 0.7:
                op[rng.choice(["id", "id", "memory_id"])] = rng.choice(["0", "1", "2", "7", 0, 1.0, -1, None, "m0", [1]])
            if rng.random() < 0.7:
                op[rng.choice(["text", "text", "memory", "value"])] = rng.choice(
                    ["Ava lives in Brevik", "", " ", None, 5, {"a": 1}, [1], gen_string(rng)])
            if rng.random() < 0.2:
                op["tags"] = rng.choice([["x"], "x", [None, 1], []])
            ops.append(op if rng.random() < 0.9 else gen_weird(rng))
        body: Any = ops if rng.random() < 0.8 else {rng.choice(["operations", "ops", "facts", "ids", "x"]): ops}
        try:
            text = json.dumps(body, ensure_ascii=rng.random() < 0.5, allow_nan=True)
        except (ValueError, RecursionError):
            text = "[]"
    elif roll < 0.7:
        text = json.dumps([rng.choice([0, 1, 2, "0", "1", "9", -1, 1.0, None, True, {"id": "1"}])
                           for _ in range(rng.randrange(0, 5))])
    elif roll < 0.85:
        text = rng.choice(["True", "False", "true.", "FALSE", "correct", "untrue", "Trueish", ""]) + gen_string(rng, 10)
    else:
        text = rng.choice(["\\boxed{Paris}", "\\boxed{", "\\boxed {x}", "\\boxed{a{b}c}", "the answer is Paris",
                           "Therefore, the answer is **Paris**.", "\\fbox{x}"]) + gen_string(rng, 10)
    if rng.random() < 0.3:
        text = text[: rng.randrange(len(text) + 1)]
    if rng.random() < 0.2:
        text = text.replace('"', "'")
    if rng.random() < 0.2:
        text = f"```{rng.choice(['json', '', 'python'])}\n{text}" + rng.choice(["\n```", ""])
    if rng.random() < 0.25:
        text = rng.choice(["<think>", "<think>hmm</think>", "</think>", "<think>a</think><think>"]) + text
    if rng.random() < 0.2:
        text = gen_string(rng, 20) + text + gen_string(rng, 20)
    return text


# --------------------------------------------------------------------------- a whole run


def run_corpus(tally: Tally, folder: Path, bank: UpdateBank) -> None:
    """Every committed corpus file plus the big inputs built at run time."""
    for path in corpus_files("presets") + big_presets(folder):
        tally.add(f"preset {path.name}", check_preset_file(path))
    for path in corpus_files("data") + big_data(folder):
        tally.add(f"data {path.name}", check_data_file(path))
    texts = [(p.name, read_output(p)) for p in corpus_files("outputs")]
    texts += [(f"big output {i}", t) for i, t in enumerate(big_outputs())]
    for name, text in texts:
        tally.add(f"output {name}", check_output(text))
        tally.add(f"update {name}", bank.apply(text))


def run_generated(tally: Tally, folder: Path, bank: UpdateBank, n: int, seed: int = 0) -> None:
    """``n`` generated inputs: 45% model outputs (each also applied to the bank, counted once), 10%
    operation dicts applied to the bank, 20% preset dicts, 10% preset YAML files, 10% data files, 5%
    synthetic URIs."""
    rng = random.Random(seed)
    for i in range(n):
        roll = rng.random()
        if roll < 0.1:
            ops = gen_op_dicts(rng)
            tally.add(f"generated operation dicts {i} {repr(ops)[:80]}", bank.apply_dicts(ops))
        elif roll < 0.55:
            text = gen_output(rng)
            outcome = _worst([check_output(text), bank.apply(text)])
            tally.add(f"generated output {i} {text[:80]!r}", outcome)
        elif roll < 0.75:
            tally.add(f"generated preset {i}", check_preset_data(gen_preset(rng)))
        elif roll < 0.85:
            path = folder / f"gen_{i}.yaml"
            path.write_bytes(gen_preset_text(rng).encode("utf-8", "surrogatepass"))
            tally.add(f"generated preset file {i}", check_preset_file(path))
            path.unlink()
        elif roll < 0.95:
            path = gen_data_file(rng, folder, i)
            tally.add(f"generated data {path.name}", check_data_file(path))
            path.unlink()
        else:
            uri = gen_uri(rng)
            tally.add(f"generated uri {uri}", check_data_uri(uri))


def fuzz(n: int, seed: int = 0) -> Tally:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="memfactory-fuzz-") as tmp:
        folder = Path(tmp)
        bank = UpdateBank(folder)
        try:
            run_corpus(tally, folder, bank)
            run_generated(tally, folder, bank, n, seed)
        finally:
            bank.close()
    return tally
