"""CLI sub-commands, one file each; each defines register(subparsers)."""
