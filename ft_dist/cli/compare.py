"""`ft-dist compare CONFIG`: dense, DST, static ensemble, EDST and DST Ensemble side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """\
examples:
  ft-dist compare configs/demo_edst.yaml                 # bundled MNIST, about 10 min on 2 CPUs
  ft-dist compare configs/demo_edst.yaml sparsity.density=0.1 --out runs/compare-d01
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train and evaluate dense / DST / static ensemble / EDST / DST Ensemble",
        description=(
            "From one EDST config (M, t_ex, t_re), train with matched budgets a dense model "
            "and a single DST model (t_ex + t_re epochs each), a static sparse ensemble and a "
            "DST Ensemble (M models of t_ex + t_re epochs), and EDST (t_ex + M*t_re epochs), "
            "evaluate each, and print the FreeTickets table in miniature: accuracy, NLL, ECE "
            "(raw and temperature-scaled), OoD AUROC, deep-ensemble equivalent, training and "
            "inference FLOPs relative to dense, parameters, images/s, time. Finished "
            "variants are reused; re-running resumes. The path of compare.json is printed last."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="an EDST run config (ensemble.method: edst)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    parser.add_argument(
        "--out", metavar="DIR", help="where the variants go (default: <train.output_dir>/compare)"
    )
    parser.add_argument(
        "--ood",
        default="auto",
        metavar="SHARDS",
        help="OoD set as for `ft-dist evaluate`; 'auto' = the 'ood' split of data.root if "
        "present; 'none' = skip",
    )
    parser.add_argument(
        "--deep-ensemble",
        action="store_true",
        help="also train a deep ensemble (M dense models, t_ex + t_re epochs each): the "
        "dense curve for each row's deep-ensemble equivalent (DEE)",
    )
    parser.add_argument(
        "--channel-sparsity",
        type=float,
        default=0.5,
        metavar="S",
        help="also train channel-level EDST removing this fraction of channels during the "
        "exploration phase (0.5; 0 = no such row)",
    )
    parser.add_argument(
        "--channel-allocation",
        choices=["uniform", "global"],
        default="uniform",
        help="sparsity.channel_allocation of that row (uniform)",
    )
    parser.add_argument(
        "--channel-group-sparsity",
        nargs="+",
        default=[],
        metavar="GROUP=FRACTION",
        help="per-group fractions of that row (sparsity.channel_group_sparsity, uniform "
        "allocation), e.g. features.0=0.75 to cut the demo model's memory-bound first conv "
        "deeper (what `make compare` does)",
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log evaluations to W&B")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(func=handler)


def _ood_argument(value: str, data_root: str) -> str | None:
    if value == "none":
        return None
    if value == "auto":
        from ft_dist.data.manifest import MANIFEST_NAME

        return "ood" if (Path(data_root) / "ood" / MANIFEST_NAME).is_file() else None
    return value


def _channels(args: argparse.Namespace, cfg) -> dict | None:
    """The channel-level EDST row's sparsity settings (removal ends at the default step)."""
    if args.channel_sparsity <= 0 or cfg.ensemble.edst is None:
        return None
    return {
        "channel_sparsity": args.channel_sparsity,
        "channel_allocation": args.channel_allocation,
        "channel_group_sparsity": group_fractions(args.channel_group_sparsity),
    }


def group_fractions(pairs: list[str]) -> dict[str, float]:
    """``["features.0=0.75"]`` -> ``{"features.0": 0.75}``; a malformed pair is an error
    naming the flag."""
    fractions = {}
    for pair in pairs:
        group, _, value = pair.rpartition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = None
        if not group or fraction is None:
            raise ValueError(
                f"--channel-group-sparsity: {pair!r} is not GROUP=FRACTION (e.g. features.0=0.75)"
            )
        fractions[group] = fraction
    return fractions


def handler(args: argparse.Namespace) -> int:
    from ft_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    channels = _channels(args, cfg)  # a malformed flag fails before Ray starts

    import ray

    from ft_dist.orchestrate.compare import run_comparison
    from ft_dist.orchestrate.compare_table import render_table, table_notes
    from ft_dist.train.worker import absolute_paths, connect

    cfg = absolute_paths(cfg)
    out_dir = Path(args.out).resolve() if args.out else Path(cfg.train.output_dir) / "compare"
    try:
        connect(cfg.ray.address)
        rows, written = run_comparison(
            cfg,
            out_dir,
            ood=_ood_argument(args.ood, cfg.data.root),
            track=not args.no_wandb,
            deep_ensemble=args.deep_ensemble,
            channels=channels,
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    print(
        json.dumps(rows, indent=2) if args.json else render_table(rows) + "\n" + table_notes(rows)
    )
    print(written["json"], flush=True)
    return 0
