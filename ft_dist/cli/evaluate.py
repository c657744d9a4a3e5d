"""`ft-dist evaluate RUN_DIR`: ensemble metrics, OoD, corruptions and a report for a run."""

from __future__ import annotations

import argparse

# ft_dist.ensemble.corruptions imports torch; `ft-dist --help` must not. These mirror its
# CORRUPTIONS keys and SEVERITIES (tests/cli/test_help.py keeps them in step).
CORRUPTION_NAMES = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "pixelate", "rotate")
SEVERITIES = (1, 2, 3, 4, 5)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate the tickets of a run (EDST/single) or experiment (DST Ensemble)",
        description=(
            "Evaluate every ticket of RUN_DIR (RUN_DIR/tickets/ticket_*.pt) or of a DST "
            "Ensemble EXP_DIR (EXP_DIR/members/member_*/tickets) and their ensemble (mean of "
            "softmax probabilities) on the run's test split: accuracy, NLL, ECE (15 bins), "
            "Brier, optional OoD AUROC and corruptions, diversity. Writes report.json, "
            "report.md and plots/ under OUT (default RUN_DIR/eval), logs them to W&B "
            "(offline without WANDB_API_KEY), and prints the path of report.json last."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run or experiment directory")
    parser.add_argument(
        "--ood",
        metavar="SHARDS",
        help="OoD set: a split dir with manifest.json, a dataset root with an 'ood' split, "
        "or a split name under data.root (e.g. 'ood' after `ft-dist shards mnist`)",
    )
    parser.add_argument(
        "--corruptions",
        nargs="*",
        metavar="NAME",
        help=f"corruptions to test ({', '.join(CORRUPTION_NAMES)}); the flag alone or 'all' = all",
    )
    parser.add_argument(
        "--severities",
        nargs="+",
        type=int,
        default=[1, 3, 5],
        choices=SEVERITIES,
        metavar="S",
        help="corruption severities 1..5 (default: 1 3 5)",
    )
    parser.add_argument("--split", help="labelled split to evaluate (default: data.test_split)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (default: data.root)")
    parser.add_argument("--out", metavar="DIR", help="report directory (default: RUN_DIR/eval)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader decode processes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    parser.set_defaults(func=handler)


def _corruption_names(values: list[str] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if not values or values == ["all"]:
        from ft_dist.ensemble.corruptions import CORRUPTIONS

        return tuple(CORRUPTIONS)
    return tuple(values)


def handler(args: argparse.Namespace) -> int:
    from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    options = EvalOptions(
        ood=args.ood,
        corruptions=_corruption_names(args.corruptions),
        severities=tuple(args.severities),
        split=args.split,
        data_root=args.data,
        out_dir=args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        track=not args.no_wandb,
    )
    written = evaluate_run(args.run_dir, options)
    print(f"report: {written['markdown']}")
    print(written["json"])
    return 0
