"""`ft-dist` entry point.

Each subcommand lives in its own module under `ft_dist.cli` and exposes
`add_parser(subparsers)`, which registers its arguments and sets `func` to a handler
taking the parsed namespace and returning an exit code. Handlers import heavy libraries
(torch, ray) lazily so that `ft-dist --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from ft_dist.cli import bench, compare, evaluate, export, flops, shards, sweep, train
from ft_dist.utils import short_notes

# Order here is the order `ft-dist --help` lists the commands in.
COMMAND_MODULES = [shards, train, sweep, bench, flops, evaluate, export, compare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ft-dist",
        description="Sparse deep ensembles (FreeTickets) with dynamic sparse training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ray folds lines that differ only in words with digits, across processes, into one
    # "[repeated Nx across cluster]": a DST Ensemble's `[member_2] resumed from ...` line
    # vanished behind member 1's. Our workers print little and only on rank 0: keep it all
    # (read when Ray is imported, which the commands do lazily; RAY_DEDUP_LOGS=1 restores it).
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args = build_parser().parse_args(argv)
    short_notes()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # User errors: print the message (it names the field and the fix), no traceback.
        print(f"ft-dist {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
