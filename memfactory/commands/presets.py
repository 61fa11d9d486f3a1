"""``memfactory presets list|validate|show``: check a preset before a long run starts."""

from __future__ import annotations

import argparse

from memfactory.config import load_preset
from memfactory.paths import presets_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list, validate or show YAML presets")
    sub = parser.add_subparsers(dest="presets_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="presets shipped in presets/")
    listing.set_defaults(func=run_list)
    for name, func, text in (
        ("validate", run_validate, ("check a preset and what start-up would check (model path, data files, judge) "
         "without loading a model; exit 2 with every problem and its field path")),
        ("show", run_show, "print a preset with every default filled in"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("file", help="preset YAML file")
        action.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a preset field, e.g. --set trainer.lr=1e-5 (repeatable)")
        if name == "validate":
            action.add_argument("--no-startup-checks", action="store_true",
                                help="check the schema only, not the model path, data files and judge that "
                                "`memfactory train` checks before it starts (e.g. for a preset meant for another machine)")
        action.set_defaults(func=func)


def run_list(args: argparse.Namespace) -> int:
    for path in sorted(presets_dir().glob("*.yaml")):
        print(path.relative_to(presets_dir().parent))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from memfactory.preflight import check_preflight

    preset = load_preset(args.file, args.overrides)
    if not args.no_startup_checks:
        check_preflight(preset, args.file)  # what `memfactory train` checks before it starts (no model loads)
    print(f"{args.file}: ok (agent {preset.agent}, env {preset.env.type}, model {preset.model.path})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(load_preset(args.file, args.overrides).to_yaml(), end="")
    return 0
