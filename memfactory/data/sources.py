"""What a data-source string names, and the one place that resolves and loads it.

A preset's ``env.data`` / ``env.eval`` entries, ``memfactory data check`` and the Playground take
three kinds of string:

* ``synthetic://<kind>?n=..&seed=..`` (:class:`Synthetic`): a seeded generator. ``docqa``,
  ``hotpotqa`` and ``fwe`` write long-context QA records, ``locomo`` LoCoMo conversations. One
  parser (:func:`parse_synthetic`) and one table of parameters and limits (:data:`SYNTHETIC_KINDS`).
* a path with a folder in it (:class:`File`): that file, nothing else.
* a bare name (:class:`SetName`): ``eval_50``, ``eval_fwe_16384.json``, ``locomo10`` ... a file of
  that name in the working folder, else the set of that name in ``data_dir``, its family's
  sub-folder of it, then the shipped ``assets/data``.

Sets come in two families (:data:`LONG_CONTEXT`, :data:`LOCOMO`) that differ in file types,
sub-folder, generators and loader. An environment names its family when it registers
(``data_family=`` in its registry entry), so :mod:`memfactory.preflight` checks a preset's data
with :func:`check` — resolved, never loaded or generated — without knowing any environment type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

from memfactory.data.locomo import locomo_samples, looks_like_locomo, read_locomo
from memfactory.data.memagent import read_records, records_to_samples
from memfactory.data.synth import synth_dataset
from memfactory.data.synth_locomo import synth_locomo
from memfactory.errors import DataError
from memfactory.paths import assets_dir, is_file
from memfactory.types import Sample

SYNTHETIC = "synthetic://"
MAX_SYNTH_N = 100_000  # generated samples (a typo such as n=1000000000 would otherwise generate for hours)
MAX_DOCS = 25_600  # documents of one generated context
MAX_LENGTH = 1_048_576  # tokens of one generated context (2**20)


# --------------------------------------------------------------------------- synthetic:// URIs


@dataclass(frozen=True)
class Param:
    """One integer parameter of a synthetic URI: its default (None: the generator's own) and bounds.

    A bound left as None is the generator's to check: it knows the rule (``docs >= 2``, ...)."""

    default: int | None = None
    low: int | None = None
    high: int | None = None


_SEED = Param(0)
# kind -> parameter -> Param: the one table of what each generator takes, its defaults and limits.
SYNTHETIC_KINDS: dict[str, dict[str, Param]] = {
    "docqa": {"n": Param(64, 1, MAX_SYNTH_N), "seed": _SEED, "min_docs": Param(high=MAX_DOCS),
              "max_docs": Param(high=MAX_DOCS)},
    "hotpotqa": {"n": Param(64, 1, MAX_SYNTH_N), "seed": _SEED, "docs": Param(high=MAX_DOCS)},
    "fwe": {"n": Param(64, 1, MAX_SYNTH_N), "seed": _SEED, "length": Param(high=MAX_LENGTH)},
    # n counts conversations here (each holds a dozen questions), sessions per conversation
    "locomo": {"n": Param(4, 1, 10_000), "seed": _SEED, "sessions": Param(None, 1, 1_000)},
}


@dataclass(frozen=True)
class Synthetic:
    """A parsed ``synthetic://`` URI: the generator and its keyword arguments (defaults filled in)."""

    kind: str
    params: dict[str, int] = field(hash=False)
    uri: str

    @property
    def source(self) -> str:
        """The name its samples carry in ``meta["source"]`` and their ids."""
        return f"synthetic_{self.kind}"


@dataclass(frozen=True)
class File:
    path: Path


@dataclass(frozen=True)
class SetName:
    name: str


Source = Synthetic | File | SetName


def is_synthetic(text: str | Path) -> bool:
    """Whether a source string is a ``synthetic://`` URI (the one place that tests the prefix)."""
    return str(text).startswith(SYNTHETIC)


def _bound_message(key: str, spec: Param, value: int) -> str | None:
    if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
        return f"parameter {key!r} must be between {spec.low} and {spec.high}, got {value}"
    if spec.high is not None and value > spec.high:
        return f"parameter {key!r} must be at most {spec.high}, got {value}"
    if spec.low is not None and value < spec.low:
        return f"parameter {key!r} must be at least {spec.low}, got {value}"
    return None


def parse_synthetic(uri: str) -> Synthetic:
    """``synthetic://docqa?n=64&seed=0`` -> Synthetic("docqa", {"n": 64, "seed": 0}); DataError naming
    the parameter for an unknown kind or parameter, a non-integer or a value out of bounds."""
    parsed = urlparse(uri)
    kind = parsed.netloc or parsed.path.strip("/")
    if parsed.scheme != "synthetic" or kind not in SYNTHETIC_KINDS:
        raise DataError(uri, f"expected synthetic://<kind>?n=..; kind one of {', '.join(SYNTHETIC_KINDS)}")
    table = SYNTHETIC_KINDS[kind]
    params: dict[str, int] = {}
    for key, value in parse_qsl(parsed.query, keep_blank_values=True):
        spec = table.get(key)
        if spec is None:
            raise DataError(uri, f"unknown parameter {key!r} for {kind}; allowed: {', '.join(sorted(table))}")
        try:
            params[key] = int(value)
        except ValueError:
            raise DataError(uri, f"parameter {key!r} must be an integer, got {value!r}") from None
        problem = _bound_message(key, spec, params[key])
        if problem:
            raise DataError(uri, problem)
    for key, spec in table.items():
        if spec.default is not None:
            params.setdefault(key, spec.default)
    return Synthetic(kind, params, uri)


def parse_source(text: str | Path) -> Source:
    """What a source string names, from its spelling alone (the disk is not read; a synthetic URI is
    parsed and bounds-checked): a URI, a path with a folder in it, or a bare name."""
    text = str(text)
    if is_synthetic(text):
        return parse_synthetic(text)
    if "/" in text or "\\" in text:
        return File(Path(text))
    return SetName(text)


# --------------------------------------------------------------------------- families of sets


def _long_context_synthetic(src: Synthetic, tokenizer: Any = None) -> list[Sample]:
    kwargs = dict(src.params)
    n, seed = kwargs.pop("n"), kwargs.pop("seed")
    if src.kind == "fwe" and tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    try:
        records = synth_dataset(src.kind, n, seed, **kwargs)
    except ValueError as exc:  # the generator's own rule (docs >= 2, min_docs <= max_docs, ...)
        raise DataError(src.uri, str(exc)) from None
    samples = records_to_samples(records, src.source)
    for sample in samples:
        sample.meta["source"] = src.source
    return samples


def _locomo_synthetic(src: Synthetic, exclude_categories: tuple[int, ...] | list[int] = (5,)) -> list[Sample]:
    try:
        records = synth_locomo(**src.params)
    except ValueError as exc:
        raise DataError(src.uri, str(exc)) from None
    return locomo_samples(records, src.uri, exclude_categories=exclude_categories)


@dataclass(frozen=True)
class SetFamily:
    """A shape of data set: its files, where its named sets live and how to get them."""

    label: str  # as messages name it
    kinds: tuple[str, ...]  # the synthetic generators that write this shape
    suffixes: tuple[str, ...]  # its file types
    subfolder: str  # data_dir/<subfolder> is searched after data_dir
    listed: str  # list_sets shows the set names that start with this
    how_to_get: str


LONG_CONTEXT = SetFamily(
    label="long-context QA",
    kinds=("docqa", "hotpotqa", "fwe"),
    suffixes=(".json", ".jsonl", ".parquet"),
    subfolder="hotpotqa",
    listed="eval_",
    how_to_get="Download MemAgent's sets with `memfactory data download memagent --to <data_dir>` "
    "or generate one with `memfactory data synth`.",
)
LOCOMO = SetFamily(
    label="LoCoMo",
    kinds=("locomo",),
    suffixes=(".json",),
    subfolder="locomo",
    listed="locomo",
    how_to_get="Get the real one with `memfactory data download locomo --to <data_dir>` "
    "or generate one with `memfactory data synth locomo`.",
)
FAMILIES = (LONG_CONTEXT, LOCOMO)


def family_of(text: str | Path) -> SetFamily:
    """The family a URI or an existing file holds (a LoCoMo file is sniffed by its first record)."""
    src = parse_source(text)
    if isinstance(src, Synthetic):
        return LOCOMO if src.kind in LOCOMO.kinds else LONG_CONTEXT
    return LOCOMO if looks_like_locomo(text) else LONG_CONTEXT


def search_dirs(family: SetFamily, data_dir: str | Path | None) -> list[Path]:
    """Where named sets are looked for: ``data_dir``, ``data_dir/<subfolder>``, then assets/data."""
    dirs = [Path(data_dir), Path(data_dir) / family.subfolder] if data_dir else []
    return dirs + [assets_dir() / "data"]


def _stems(family: SetFamily, folders: list[Path]) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        if folder.is_dir():
            found |= {p.stem for p in folder.iterdir() if p.suffix.lower() in family.suffixes}
    return found


def list_sets(family: SetFamily, data_dir: str | Path | None = "data") -> list[str]:
    """Names of the family's sets visible from ``data_dir`` and the shipped assets."""
    return sorted(s for s in _stems(family, search_dirs(family, data_dir)) if s.startswith(family.listed))


def find_set(name: str, family: SetFamily, data_dir: str | Path | None = "data") -> Path:
    """A bare set name (``eval_50``, ``eval_50.json``, ``locomo10``) -> the file that holds it: a file
    of that name in the working folder, else ``<stem><suffix>`` in :func:`search_dirs`."""
    if is_file(name):
        return Path(name)
    stem = Path(name).stem if Path(name).suffix.lower() in family.suffixes else Path(name).name
    searched = search_dirs(family, data_dir)
    for folder in searched:
        for suffix in family.suffixes:
            if is_file(folder / f"{stem}{suffix}"):
                return folder / f"{stem}{suffix}"
    available = sorted(_stems(family, searched))
    hint = f" Available: {', '.join(available)}." if available else ""
    where = ", ".join(str(p) for p in searched)
    raise DataError(name, f"{family.label} set not found in {where}.{hint} {family.how_to_get}")


def resolve(text: str | Path, family: SetFamily, data_dir: str | Path | None = "data") -> Synthetic | File:
    """The URI parsed or the file found, nothing loaded or generated; DataError naming what is wrong
    (a generator of the other family, a missing file, a file type the family does not read)."""
    src = parse_source(text)
    if isinstance(src, Synthetic):
        if src.kind not in family.kinds:
            raise DataError(src.uri, f"synthetic://{src.kind} does not write {family.label} data; "
                            f"kinds here: {', '.join(family.kinds)}")
        return src
    path = find_set(src.name, family, data_dir) if isinstance(src, SetName) else src.path
    if not is_file(path):
        raise DataError(str(path), "file not found")
    if path.suffix.lower() not in family.suffixes:
        raise DataError(str(path), f"unsupported file type {path.suffix or '(none)'!r}; "
                        f"{family.label} sets are {', '.join(family.suffixes)} files")
    return File(path)


def check(text: str, family: SetFamily, data_dir: str | Path | None, *, required: bool = True) -> None:
    """Raise DataError when ``text`` would not resolve. ``required=False`` (an eval entry) lets a
    bare set name without a file suffix go unresolved: it may be downloaded before it is used."""
    src = parse_source(text)
    if not required and isinstance(src, SetName) and Path(src.name).suffix.lower() not in family.suffixes:
        return
    resolve(text, family, data_dir)


# --------------------------------------------------------------------------- loading


def _loadable(source: str | Path | Synthetic | File, family: SetFamily) -> Synthetic | File:
    """A URI or file path as given (no set lookup: that is :func:`resolve`'s)."""
    if isinstance(source, (Synthetic, File)):
        src = source
    else:
        src = parse_source(source)
        if isinstance(src, SetName):
            src = File(Path(src.name))
    if isinstance(src, Synthetic) and src.kind not in family.kinds:
        raise DataError(src.uri, f"synthetic://{src.kind} does not write {family.label} data; "
                        f"kinds here: {', '.join(family.kinds)}")
    return src


def load_samples(
    source: str | Path | Synthetic | File, fmt: str | None = None, *, tokenizer: Any = None
) -> list[Sample]:
    """Samples of a MemAgent / RULER / verl file or a long-context ``synthetic://`` URI. ``fmt`` forces
    a file's record shape; ``tokenizer`` measures ``fwe`` lengths (default ~4 chars a token)."""
    src = _loadable(source, LONG_CONTEXT)
    if isinstance(src, Synthetic):
        return _long_context_synthetic(src, tokenizer)
    return records_to_samples(read_records(src.path), str(src.path), fmt)


def load_locomo(
    source: str | Path | Synthetic | File, *, exclude_categories: tuple[int, ...] | list[int] = (5,)
) -> list[Sample]:
    """Samples (one per QA item) of a LoCoMo file or a ``synthetic://locomo?n=..&seed=..`` URI."""
    src = _loadable(source, LOCOMO)
    if isinstance(src, Synthetic):
        return _locomo_synthetic(src, exclude_categories)
    return locomo_samples(read_locomo(src.path), str(src.path), exclude_categories=exclude_categories)


def load_any(source: str | Path) -> list[Sample]:
    """Every sample of a file or URI of either family (LoCoMo: every category), for ``data check``."""
    if family_of(source) is LOCOMO:
        return load_locomo(source, exclude_categories=[])
    return load_samples(source)
