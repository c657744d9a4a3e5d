"""`ft-dist evaluate RUN_DIR`: ensemble metrics, OoD, corruptions and a report for a run."""

from __future__ import annotations

import argparse

# The corruptions' torch-free table (ensemble/corruptions.py imports torch; `--help` must not).
from ft_dist.ensemble.corruption_table import CORRUPTION_LEVELS, SEVERITIES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate the tickets of a run (EDST/single) or experiment (DST Ensemble)",
        description=(
            "Evaluate every ticket of RUN_DIR (RUN_DIR/tickets/ticket_*.pt) or of a DST "
            "Ensemble EXP_DIR (EXP_DIR/members/member_*/tickets) and their ensemble (mean of "
            "softmax probabilities) on the run's test split: accuracy, NLL, ECE (15 bins), "
            "Brier, the same after temperature scaling fitted on the validation split, "
            "optional OoD detection (AUROC, AUPR-in/out, FPR at 95 percent TPR) and "
            "corruptions (built-in, or CIFAR-10-C / CIFAR-100-C / ImageNet-C files: cA, cNLL, "
            "cECE as uncertainty-baselines and the paper's pooled figures), diversity. Writes report.json, "
            "report.md and plots/ under OUT (default RUN_DIR/eval), logs them to W&B "
            "(offline without WANDB_API_KEY), and prints the path of report.json last."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run or experiment directory")
    parser.add_argument(
        "--ood",
        metavar="SHARDS",
        action="append",
        help="OoD set (repeatable): a split dir with manifest.json (any shard set, e.g. "
        "`ft-dist shards svhn` output), a dataset root with an 'ood' split, a split name under "
        "data.root (e.g. 'ood' after `ft-dist shards mnist`), or 'gaussian' (the paper's "
        "Gaussian-noise images, as many as the test split)",
    )
    parser.add_argument(
        "--corruptions",
        nargs="*",
        metavar="NAME",
        help=f"built-in corruptions to test ({', '.join(CORRUPTION_LEVELS)}); the flag alone "
        "or 'all' = all. With --corruptions-from: which of the directory's corruptions",
    )
    parser.add_argument(
        "--corruptions-from",
        metavar="DIR",
        help="CIFAR-10-C / CIFAR-100-C (<corruption>.npy + labels.npy) or ImageNet-C "
        "(<corruption>/<severity>/<wnid>/*.JPEG) directory: every corruption x severity, "
        "reported per cell and pooled into one set as in the paper",
    )
    parser.add_argument(
        "--corruption-limit",
        type=int,
        metavar="N",
        help="with --corruptions-from: N evenly spaced images per corruption x severity",
    )
    parser.add_argument(
        "--severities",
        nargs="+",
        type=int,
        choices=SEVERITIES,
        metavar="S",
        help="corruption severities 1..5 (default: 1 3 5 built-in, all five from files)",
    )
    parser.add_argument("--split", help="labelled split to evaluate (default: data.test_split)")
    parser.add_argument(
        "--calibration-split",
        metavar="NAME",
        help="labelled split to fit temperature scaling on, per member and for the ensemble "
        "(default: data.val_split when it exists; 'none' = no calibrated figures)",
    )
    parser.add_argument(
        "--ece-bins",
        metavar="N|official",
        help="equal-width ECE bins (default 15; 'official' = the official FreeTickets code's "
        "linspace(0, 1, 15) + digitize binning, i.e. 14 bins; the default for runs with "
        "sparsity.compat official-*)",
    )
    parser.add_argument("--data", metavar="ROOT", help="dataset root (default: data.root)")
    parser.add_argument("--out", metavar="DIR", help="report directory (default: RUN_DIR/eval)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader decode processes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="evaluate the tickets found even when the run plans more (ensemble.num_members): "
        "a run still training or stopped early; without it such an ensemble is refused",
    )
    parser.set_defaults(func=handler)


def _corruption_names(values: list[str] | None, from_files: bool) -> tuple[str, ...]:
    if values is None or (from_files and values in ([], ["all"])):
        return ()  # from files: every corruption the directory holds
    if not values or values == ["all"]:
        return tuple(CORRUPTION_LEVELS)
    return tuple(values)


def _ece_bins(value: str | None) -> int | None:
    if value is None:
        return None
    if value == "official":
        return 14  # ft_dist.ensemble.metrics.OFFICIAL_ECE_BINS (not imported: no torch here)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--ece-bins must be a positive integer or 'official', got {value!r}")
    return int(value)


def handler(args: argparse.Namespace) -> int:
    from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    if args.corruption_limit is not None and not args.corruptions_from:
        raise ValueError("--corruption-limit applies to --corruptions-from DIR only")
    options = EvalOptions(
        calibration_split=args.calibration_split,
        ece_bins=_ece_bins(args.ece_bins),
        ood=tuple(args.ood or ()),
        corruptions=_corruption_names(args.corruptions, bool(args.corruptions_from)),
        severities=tuple(args.severities) if args.severities else None,
        corruptions_from=args.corruptions_from,
        corruption_limit=args.corruption_limit,
        split=args.split,
        data_root=args.data,
        out_dir=args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        track=not args.no_wandb,
        allow_incomplete=args.allow_incomplete,
    )
    written = evaluate_run(args.run_dir, options)
    print(f"report: {written['markdown']}")
    print(written["json"])
    return 0
