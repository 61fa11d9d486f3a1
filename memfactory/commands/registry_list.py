"""``memfactory list``: everything the registry holds, with descriptions and options."""

from __future__ import annotations

import argparse

from memfactory.registry import KINDS, REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list registered modules, agents, envs, rewards and backends")
    parser.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each entry's options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for kind in [args.kind] if args.kind else KINDS:
        print(f"{kind}s:")
        for entry in REGISTRY.entries(kind):
            print(f"  {entry.name:<24} {entry.description}")
            if args.verbose:
                for field_name, field in entry.config.model_fields.items():
                    default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
                    print(f"      {field_name}: {field.description or ''} ({default})")
        print()
    return 0
