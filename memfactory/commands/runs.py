"""``memfactory runs list|show|delete``: what the runs database knows, from the terminal.

``list`` and ``show`` first reconcile the database (a run whose trainer process is gone is
marked failed), so they never report a dead run as running. Durations, step counts and the ETA
are formatted by memfactory.tracking.view, as in the web UI; ``show``'s last metrics come from
the run's metrics.jsonl through the one reader (memfactory.tracking.metrics.read_records).
"""

from __future__ import annotations

import argparse
import json
import math

from memfactory.errors import MemFactoryError
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import RunDir, read_records
from memfactory.tracking.runs import STATUSES, RunRecord, open_db
from memfactory.tracking.view import format_duration, steps_text


def _default_db() -> str:
    from memfactory.config import LoggingConfig

    return LoggingConfig().runs_db


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="list and inspect training runs")
    actions = parser.add_subparsers(dest="runs_command", metavar="ACTION")

    def add_db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default=_default_db(), help="runs database (default: %(default)s)")

    p_list = actions.add_parser("list", help="a table of all runs, newest first")
    add_db(p_list)
    p_list.add_argument("--status", choices=STATUSES)
    p_list.add_argument("-n", "--limit", type=int, default=None, help="show at most N runs")
    p_list.set_defaults(func=run_list)

    p_show = actions.add_parser("show", help="one run: status, steps, rewards, error, last metrics")
    add_db(p_show)
    p_show.add_argument("run_id")
    p_show.set_defaults(func=run_show)

    p_delete = actions.add_parser("delete", help="remove a finished/failed run from the database")
    add_db(p_delete)
    p_delete.add_argument("run_id")
    p_delete.add_argument("--files", action="store_true", help="also delete the run folder")
    p_delete.set_defaults(func=run_delete)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _gib(value: float | None) -> str:
    """Peak memory as ``1.23`` GiB, or ``-`` for runs that logged none (older versions)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def format_table(records: list[RunRecord]) -> str:
    """Runs as an aligned text table."""
    header = ["ID", "PRESET", "STATUS", "STEP", "BEST", "LAST", "PEAK GiB", "STARTED (UTC)", "TIME"]
    rows = [
        [
            r.id,
            r.name,
            r.status,
            steps_text(r.step, r.total_steps),
            _num(r.best_reward),
            _num(r.last_reward),
            _gib(r.peak_gib),
            RunRecord.iso(r.started_at),
            format_duration(r.duration_s),
        ]
        for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    db = open_db(args.db, create=False)
    db.reconcile()
    records = db.list_runs(status=args.status, limit=args.limit)
    if not records:
        print(f"no runs in {db.path}" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(format_table(records))
    return 0


def _last_metrics(record: RunRecord) -> tuple[int | None, dict]:
    """The run's last step in metrics.jsonl: its step and its values (NaN/inf, stored as null, left out)."""
    records = read_records(RunDir(record.run_dir).metrics_path)
    if not records:
        return None, {}
    last = records[-1]
    return last.get(keys.STEP), {k: v for k, v in last.items() if k not in (keys.STEP, keys.TIME) and v is not None}


def run_show(args: argparse.Namespace) -> int:
    db = open_db(args.db, create=False)
    db.reconcile()
    r = db.get(args.run_id)
    if r is None:
        raise MemFactoryError(db.unknown_run_message(args.run_id))
    from memfactory.trainer.layout import latest_checkpoint

    latest = latest_checkpoint(r.run_dir)
    fields = [
        ("run", r.id),
        ("preset", r.name),
        ("status", r.status),
        ("steps", steps_text(r.step, r.total_steps) + (f" ({r.progress:.0%})" if r.progress is not None else "")),
        ("best reward", _num(r.best_reward)),
        ("last reward", _num(r.last_reward)),
        ("peak GiB", _gib(r.peak_gib)),
        ("pid", r.pid if r.pid is not None else "-"),
        ("created", RunRecord.iso(r.created_at)),
        ("started", RunRecord.iso(r.started_at)),
        ("ended", RunRecord.iso(r.ended_at)),
        ("duration", format_duration(r.duration_s)),
        ("seconds/step", _num(r.seconds_per_step)),
        ("ETA", format_duration(r.eta_s if r.status == "running" else None)),
        ("run folder", r.run_dir),
        ("preset file", r.preset_path or "-"),
        ("checkpoint", str(latest) if latest else "-"),
    ]
    for key, value in r.meta.items():
        fields.append((f"meta.{key}", json.dumps(value) if not isinstance(value, str) else value))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key + ':':<{width + 1}} {value}")
    step, metrics = _last_metrics(r)
    if metrics:
        print(f"last metrics (step {step}):")
        for key in sorted(metrics):
            value = metrics[key]
            print(f"  {key}: {_num(value, 6) if isinstance(value, (int, float)) else value}")
    if r.error:
        print("error:")
        for line in r.error.splitlines():
            print(f"  {line}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    db = open_db(args.db, create=False)
    db.reconcile()
    if db.get(args.run_id) is None:
        raise MemFactoryError(db.unknown_run_message(args.run_id))
    db.delete(args.run_id, remove_files=args.files)
    print(f"deleted run {args.run_id}" + (" and its folder" if args.files else ""))
    return 0
