"""The demo's held-out accuracy over several seeds, this tree against an earlier revision.

Issue 18's no-regression check: one training run per seed in each version (`memfactory demo
--no-eval --set trainer.seed=S`), the earlier one from a `git worktree` of ``--ref`` run with its
own code, then every checkpoint scored by *this* tree's `memfactory eval` under one protocol
(`--sets eval_docqa --k 4 --temperature 0.7 --metric sub_em`), so both versions meet the same
yardstick. Prints avg@k per seed, the mean and standard deviation per version, and the difference
with its standard error (Welch).

    OMP_NUM_THREADS=1 python bench/demo_seeds.py --seeds 1 2 3 --ref 0a6fa67^

A candidate change to the demo is screened without editing the preset: ``--set KEY=VALUE``
(repeatable) reaches both the training run and the eval of this tree, and ``--label`` keeps its
scores in their own folder (``--only current --label t10 --set trainer.temperature=1.0``).

The two versions' runs go side by side (``--parallel``, default on) so that two cores finish
both in the time of one; each run is a subprocess with its own runs folder under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL_ARGS = ["--sets", "eval_docqa", "--k", "4", "--temperature", "0.7", "--metric", "sub_em", "--no-progress"]


def worktree(ref: str, workdir: Path) -> Path:
    """A checkout of ``ref`` under ``workdir`` (made once; reused when it is already there)."""
    path = workdir / "ref_tree"
    if not (path / "memfactory").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True)
    return path


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def train(tree: Path, seed: int, runs_dir: Path, log: Path, overrides: list[str]) -> Path:
    """One demo run of ``tree``'s own code; returns its run folder."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [
        sys.executable, "-m", "memfactory", "demo", "--no-eval",
        "--set", f"trainer.seed={seed}",
        "--set", f"logging.runs_dir={runs_dir}",
        "--set", f"logging.runs_db={runs_dir / 'memfactory.db'}", *set_args(overrides),
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(cmd, check=False, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text()
    found = re.search(r"run folder: (\S+)", text)
    if done.returncode != 0 or not found:
        raise SystemExit(f"training {tree} seed {seed} failed (exit {done.returncode}); see {log}")
    run = Path(found.group(1))
    return run if run.is_absolute() else tree / run


def evaluate(checkpoint: str, out: Path, log: Path, overrides: list[str]) -> float:
    """avg@k of ``checkpoint`` (a run folder, or ``none`` for the base model) with this tree's eval."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "memfactory", "eval", str(ROOT / "presets" / "tiny_cpu_demo.yaml"),
        "--checkpoint", checkpoint, "--data-dir", str(ROOT / "assets" / "data"), "--out", str(out), *EVAL_ARGS,
        *set_args(overrides),
    ]  # fmt: skip
    with log.open("w") as sink:
        done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"eval of {checkpoint} failed (exit {done.returncode}); see {log}")
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    return statistics.fmean(float(r["score"]) for r in records)


def one_version(label: str, tree: Path, seeds: list[int], workdir: Path, overrides: list[str]) -> dict[int, float]:
    scores = {}
    for seed in seeds:
        folder = workdir / label / f"seed{seed}"
        cached = folder / "score.json"
        if cached.is_file():
            scores[seed] = json.loads(cached.read_text())["sub_em"]
            continue
        start = time.time()
        run = train(tree, seed, folder / "runs", folder / "train.log", overrides)
        scores[seed] = evaluate(str(run), folder / "eval", folder / "eval.log", overrides)
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        record = {
            "sub_em": scores[seed], "run": str(run), "commit": commit, "wall_s": time.time() - start,
            "overrides": overrides,
        }  # fmt: skip
        cached.write_text(json.dumps(record))
        print(f"{label} seed {seed}: sub_em avg@4 {scores[seed]:.4f} ({time.time() - start:.0f} s)", flush=True)
    return scores


def finished_seeds(label: str, seeds: list[int], workdir: Path) -> dict[int, float]:
    """The scores already on disk for ``label`` (a version not run this time)."""
    out = {}
    for seed in seeds:
        cached = workdir / label / f"seed{seed}" / "score.json"
        if cached.is_file():
            out[seed] = json.loads(cached.read_text())["sub_em"]
    return out


def summary(scores: dict[int, float]) -> tuple[float, float]:
    values = list(scores.values())
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ref", default="0a6fa67^", help="the earlier revision to compare with")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/memfactory_demo_seeds"))
    parser.add_argument("--base", action="store_true", help="also score the untrained model once")
    parser.add_argument("--sequential", action="store_true", help="one version after the other")
    parser.add_argument(
        "--only",
        choices=["current", "ref"],
        help="train and score one version (the table reads the other's finished seeds from --workdir)",
    )
    parser.add_argument("--label", default="current", help="folder (and table row) of this tree's runs")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a preset override for this tree's training and eval runs (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    versions = [version for version in ("current", "ref") if args.only in (None, version)]
    trees = {"current": ROOT, "ref": worktree(args.ref, args.workdir) if "ref" in versions else None}
    folders = {"current": args.label, "ref": "ref"}
    extra = {"current": args.overrides, "ref": []}  # the earlier revision runs as it was
    with ThreadPoolExecutor(max_workers=1 if args.sequential else 2) as pool:
        jobs = {
            version: pool.submit(
                one_version, folders[version], trees[version], args.seeds, args.workdir, extra[version]
            )
            for version in versions
        }
        results = {version: job.result() for version, job in jobs.items()}
    for version in ("current", "ref"):
        if version not in results:
            results[version] = finished_seeds(folders[version], args.seeds, args.workdir)
    if args.base:
        base_dir = args.workdir / "base"
        base_dir.mkdir(exist_ok=True)
        base = evaluate("none", base_dir / "eval", base_dir / "eval.log", args.overrides)
        print(f"base (untrained): sub_em avg@4 {base:.4f}")
    print(f"\n| version | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | sd |")
    print(f"|---|{'---|' * len(args.seeds)}---|---|")
    results = {label: scores for label, scores in results.items() if scores}  # a version with no seed yet: no row
    for label, scores in results.items():
        mean, sd = summary(scores)
        name = f"this tree ({args.label})" if label == "current" else f"`{args.ref}`"
        cells = " | ".join(f"{scores[s]:.4f}" if s in scores else "-" for s in args.seeds)
        print(f"| {name} | {cells} | {mean:.4f} | {sd:.4f} |")
    if len(results) < 2:
        return 0
    (m1, s1), (m0, s0) = summary(results["current"]), summary(results["ref"])
    n1, n0 = len(results["current"]), len(results["ref"])
    se = math.sqrt(s1**2 / n1 + s0**2 / n0)
    print(f"\ndifference this tree - ref: {m1 - m0:+.4f} (standard error {se:.4f}; seeds: {n1} and {n0})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
