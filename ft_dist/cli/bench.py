"""`ft-dist bench ...`: reproducible benchmarks that print a table (or `--json`).

Each benchmark module under `ft_dist.bench` exposes `add_parser(subparsers)`.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ft_dist.bench import BENCHMARK_MODULES

    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark (step, data, scaling, infer, gpu, memory, ...)",
        description="Benchmarks measured side by side in one process; ratios, not absolute times, are the goals.",
    )
    bench_subparsers = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for module in BENCHMARK_MODULES:
        module.add_parser(bench_subparsers)
