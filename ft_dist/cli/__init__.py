"""`ft-dist` entry point.

Each subcommand lives in its own module under `ft_dist.cli` and exposes
`add_parser(subparsers)`, which registers its arguments and sets `func` to a handler
taking the parsed namespace and returning an exit code. Handlers import heavy libraries
(torch, ray) lazily so that `ft-dist --help` stays fast.
"""

from __future__ import annotations

import argparse
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
