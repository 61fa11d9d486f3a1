"""Rooms with one job: no Python file in memfactory/ or webui/ over 500 lines.

A file that grows past the limit is doing more than one job; split it by job (a package with one
module per job, as memfactory/eval/ is) rather than raising the limit.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def line_counts() -> dict[str, int]:
    """Lines of every Python file of the package and the web UI, by path relative to the repository."""
    files = sorted([*ROOT.glob("memfactory/**/*.py"), *ROOT.glob("webui/**/*.py")])
    return {f.relative_to(ROOT).as_posix(): len(f.read_text(encoding="utf-8").splitlines()) for f in files}


def test_no_file_is_over_the_limit():
    counts = line_counts()
    assert len(counts) > 50  # the walk found the package, not an empty folder
    over = {path: n for path, n in counts.items() if n > MAX_LINES}
    assert not over, "over {} lines (split each by job): {}".format(
        MAX_LINES, ", ".join(f"{path} ({n} lines)" for path, n in sorted(over.items()))
    )
