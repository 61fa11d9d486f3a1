"""The generators' shared vocabularies: one home, and the output they give for a seed pinned byte for byte.

The shipped sets (assets/data) and many tests are the generators' output for fixed seeds, and a
list's order decides what ``rng.choice`` / ``rng.sample`` pick: reordering or editing a word list
changes every set. The digests below are of the files ``write_json`` / ``write_locomo`` write,
taken before the vocabularies moved into ``memfactory/data/synth_words.py`` (and unchanged by it).
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest

import memfactory.data
from memfactory.data.synth import synth_dataset
from memfactory.data.synth_locomo import synth_locomo

PINNED = [
    ("docqa", 17, 0, {}, "0bd36ade41bb8732216fa4237fa3ad124d80621464bb852a2b3362501b70ba5c"),
    (
        "docqa",
        17,
        7,
        {"min_docs": 1, "max_docs": 24},
        "33d9f98e56a6794ca4069d98df9637320686e2a1efdada523f4c245775193c12",
    ),
    ("hotpotqa", 5, 0, {"docs": 60}, "ae7c3df0ad1dd1470390d5784260b2145128aa2844711357edf2525a71750abf"),
    ("hotpotqa", 5, 7, {"docs": 10}, "8adaac3e0a50d117ee8a3090cc02aa0cb356f67cc37b466852fc5927620dc830"),
    ("fwe", 2, 0, {"length": 256}, "26f8f0af3bf6ab1a29fd1baca0ed980518bdb7f7849457986273125d0dc4db54"),
    ("fwe", 2, 7, {"length": 512}, "bba062fcbcf8e0f9d25044ae0cf66240085870c6333378669d0077eca1b3dbf8"),
    ("locomo", 5, 0, {"sessions": 4}, "93a08408004947710a99aab0688879e1356e369bf76a7265119303a4d30d2a3e"),
    ("locomo", 3, 7, {"sessions": 7}, "6a07df31d6553e35f37be2e300783b55c495bb34413bba3486a5b7933d83e9f7"),
]


@pytest.mark.parametrize(("kind", "n", "seed", "options", "digest"), PINNED)
def test_generated_sets_are_byte_identical_for_a_seed(kind, n, seed, options, digest):
    records = synth_locomo(n, seed=seed, **options) if kind == "locomo" else synth_dataset(kind, n, seed, **options)
    text = json.dumps(records, ensure_ascii=False, indent=1)  # what write_json / write_locomo put in the file
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == digest, (
        f"{kind} n={n} seed={seed} {options} changed: a word list was edited or reordered; add a new list instead"
    )


def _word_lists(path: Path) -> list[str]:
    """Module-level names bound to a list or tuple literal of four or more strings (a vocabulary)."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            items = node.value.elts
            if len(items) >= 4 and all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                found += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return found


def test_the_generators_keep_no_word_list_of_their_own():
    folder = Path(memfactory.data.__file__).parent
    own = {name: _word_lists(folder / name) for name in ("synth.py", "synth_locomo.py")}
    assert own == {"synth.py": [], "synth_locomo.py": []}, "move the list into memfactory/data/synth_words.py"
    assert "DOCQA_CITIES" in _word_lists(folder / "synth_words.py")  # the finder sees a vocabulary
