"""Fuzz report: the whole corpus (tests/fuzz/corpus plus the big inputs built at run time) and N
seeded generated inputs through every entry point — preset loading, data loaders, every parser of
model output, and memory updates applied to a real SQLite bank.

    OMP_NUM_THREADS=1 python bench/fuzz_report.py --n 10000 [--seed 0] [--show 20]

Prints "N inputs tried, T tracebacks, C changed stores" and, when T or C is not 0, the first
failures; exits 1 then. The checks are those of tests/fuzz/ (one shared harness).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

from fuzz_harness import fuzz  # the harness lives with the tests it serves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="generated inputs besides the corpus (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    parser.add_argument("--show", type=int, default=20, help="failures to print in full")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    tally = fuzz(args.n, args.seed)
    seconds = time.perf_counter() - began
    print(tally.line())
    print(f"(corpus + {args.n} generated, seed {args.seed}; {seconds:.0f} s on {platform.machine()}, "
          f"Python {platform.python_version()})")
    for label, items in (("traceback", tally.tracebacks), ("changed store", tally.changed_stores),
                         ("slow", tally.slow)):
        for item in items[: args.show]:
            print(f"{label}: {item}")
    return 1 if tally.tracebacks or tally.changed_stores else 0


if __name__ == "__main__":
    sys.exit(main())
