"""`ft-dist sweep CONFIG [key=a,b,c ...]`: a grid or random search of runs on Ray Tune.

An override with comma-separated values is a grid axis (as in Hydra's multirun):
`sparsity.density=0.05,0.1 optim.lr=0.05,0.1` is 4 trials. Commas inside brackets, braces
or quotes do not split, so YAML values stay whole (`sparsity.density=[0.5,0.75]`). With
`--space FILE` each of `--num-samples` trials draws its values from a YAML file of
distributions (`optim.lr: {loguniform: [0.01, 0.2]}`, `uniform: [lo, hi]`, `choice: [a, b]`),
combined with every grid point; the draws are seeded (`--seed`), so a re-run draws the same.

Each trial is an ordinary run (resumable, evaluable, exportable) in
OUTPUT/NAME/trial-<hash of its values>, where OUTPUT is train.output_dir and NAME is --name
(default: the run name + "-sweep"); W&B runs of one sweep share the group NAME. Every trial's
config, data and model are checked before any trial starts. Trials run as Ray Tune trials
(the Tuner API), each training its run with its own Ray Train workers; `--scheduler asha`
stops poor trials early on the metric (default: the validation NLL), compared after every
epoch. A DST Ensemble trial runs each member as a Tune trial (ASHA is refused for it).

At the end the results table (best first) is printed, written with a plot of the metric
against each swept key to OUTPUT/NAME/results.csv, results.md and plot.png, and OUTPUT/NAME
is printed last. Re-running the same command resumes an interrupted sweep: finished trials
are not run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ft_dist.orchestrate.sweep_plan import SCHEDULERS

EXAMPLES = """\
examples:
  ft-dist sweep configs/demo_dst.yaml sparsity.density=0.1,0.2 optim.lr=0.05,0.1
  ft-dist sweep configs/demo_dst.yaml --space space.yaml --num-samples 8 --scheduler asha
  ft-dist sweep configs/demo_edst.yaml ensemble.num_members=2,3 --name edst-members
  FT_DIST_COMMAND=sweep launch/submit.sh configs/demo_dst.yaml optim.lr=0.05,0.1  # a Ray job

space.yaml:
  optim.lr: {loguniform: [0.01, 0.2]}
  sparsity.density: {uniform: [0.05, 0.3]}
  sparsity.growth: {choice: [gradient, random]}
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="grid or random search of runs on Ray Tune (optionally ASHA early stopping)",
        description="\n\n".join(__doc__.split("\n\n")[1:4]),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value[,value...]",
        help="dotted overrides; comma-separated values form a grid (e.g. optim.lr=0.05,0.1)",
    )
    parser.add_argument(
        "--space",
        default=None,
        metavar="FILE",
        help="YAML file of sampled keys: KEY: {choice: [...]} | {uniform: [lo, hi]} | "
        "{loguniform: [lo, hi]} (random search)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="draws from --space (each combined with every grid point; default 1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the draws from --space (default 0)"
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="none",
        help="none: every trial runs to the end (default); asha: stop poor trials early on "
        "--metric, compared after every epoch",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="what ranks trials (and what ASHA compares): VAL/nll (default, lower is better) "
        "or VAL/accuracy, VAL = data.val_split",
    )
    parser.add_argument(
        "--grace-epochs",
        type=int,
        default=1,
        help="asha: epochs every trial runs before it can be stopped (default 1)",
    )
    parser.add_argument(
        "--reduction-factor",
        type=float,
        default=2.0,
        help="asha: keep 1/N of the trials at each rung (epochs grace x N^k; default 2)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials running at once (default: as many as the cluster holds, given "
        "train.num_workers and ray.cpus_per_worker / gpus_per_worker)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="the sweep's directory under train.output_dir and its W&B group "
        "(default: train.run_name + '-sweep'); the same name again resumes",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ft_dist.orchestrate.sweep_plan import SweepOptions, plan_sweep

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be at least 1 (got {args.max_concurrent})")
    plan = plan_sweep(
        SweepOptions(
            config=args.config,
            overrides=tuple(args.overrides),
            space=args.space,
            num_samples=args.num_samples,
            seed=args.seed,
            scheduler=args.scheduler,
            metric=args.metric,
            grace_epochs=args.grace_epochs,
            reduction_factor=args.reduction_factor,
            max_concurrent=args.max_concurrent,
            name=args.name,
        )
    )
    import ray

    from ft_dist.orchestrate.sweep import run_sweep
    from ft_dist.orchestrate.sweep_table import markdown, table

    started_here = not ray.is_initialized()
    try:
        rows = run_sweep(plan)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    print(markdown(table(plan, rows)), end="")
    failed = [row for row in rows if row.status.startswith("failed")]
    for row in failed:
        print(f"ft-dist sweep: {row.trial} {row.status}", file=sys.stderr)
    print(Path(plan.dir), flush=True)
    return 1 if failed else 0
