"""`ft-dist train CONFIG [key=value ...]`: train one member on a Ray Train worker group.

Checks the data, splits, shards, model shape and the cluster's room for the workers first
(ft_dist.preflight), then joins the Ray cluster named by `ray.address` or RAY_ADDRESS
(inside `ray job submit` that is the job's own cluster), or starts a local one. Progress
lines from rank 0 stream to this terminal while it runs; the run directory is printed as
the very last line of output, so scripts can do `RUN=$(ft-dist train cfg.yaml | tail -n 1)`.

With `ensemble.method: dst_ensemble` it trains all M members of a DST Ensemble concurrently
(one worker group each, scheduled by Ray Tune) and prints the experiment directory last.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ft_dist.layout import summary_path

EXAMPLES = """\
examples:
  ft-dist train configs/demo_dst.yaml
  ft-dist train configs/demo_dst.yaml train.num_workers=2 sparsity.density=0.1
  ft-dist train configs/demo_dst.yaml train.run_name=again   # same name again = resume
  launch/submit.sh configs/demo_dst.yaml                      # via `ray job submit`
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one member (dense, DST or EDST) with Ray Train",
        description="\n\n".join(__doc__.split("\n\n")[1:3]),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05"
    )
    parser.add_argument(
        "--group", default=None, help="W&B group (the experiment); default: the run name"
    )
    parser.set_defaults(func=handle)


def summary_lines(run: Path) -> list[str]:
    """A few human lines from RUN_DIR/summary.json (nothing if the loop wrote none)."""
    path = summary_path(run)
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    metrics = summary.get("metrics", {})
    lines = [
        f"steps {summary.get('steps')} | {summary.get('images_per_s', 0.0):.0f} images/s | "
        f"training FLOPs {summary.get('train_flops', 0.0):.3g}"
    ]
    if metrics:
        lines.append(" | ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())))
    if summary.get("tickets"):
        lines.append("tickets: " + ", ".join(summary["tickets"]))
    return lines


def handle(args: argparse.Namespace) -> int:
    from ft_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    interrupted = False

    import ray

    from ft_dist.preflight import check_cluster, check_inputs
    from ft_dist.train.methods import ensemble_method
    from ft_dist.train.worker import ClusterBusyError, WorkerError, absolute_paths, connect

    cfg = absolute_paths(cfg)  # before anything is written: workers run in other dirs
    # Mistakes that fail every try are found here, before Ray starts any worker.
    check_inputs(cfg)
    from ft_dist.data.recipes import recipe_lines

    for line in recipe_lines(cfg.data):  # which preprocessing, and why (or a size warning)
        print(f"ft-dist train: {line}", file=sys.stderr, flush=True)
    try:
        connect(cfg.ray.address)
        check_cluster(cfg)
        if ensemble_method(cfg.ensemble.method).separate_runs:
            return train_ensemble(cfg)
        return train_member(cfg, args.group)
    except (ClusterBusyError, WorkerError) as error:
        print(f"ft-dist train: error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and not ray_sigint_exit(stop):
            raise
        interrupted = True
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if interrupted:  # last, after Ray's own lines
        print(stopped_line(cfg, args), file=sys.stderr, flush=True)
        return 130  # the shell's code for a run ended by SIGINT
    return 1


def ray_sigint_exit(stop: SystemExit) -> bool:
    """The exit of Ray Train's own Ctrl-C handler: it aborts the run and calls sys.exit(0),
    which Ray's blocked `ray.get` turns into SystemExit(1) carrying ray_terminate_msg
    "SystemExit is raised (sys.exit is called). Exit code: 0." (measured, Ray 2.60)."""
    if stop.code in (0, None):
        return True
    return "Exit code: 0." in str(getattr(stop, "ray_terminate_msg", ""))


def stopped_line(cfg, args: argparse.Namespace) -> str:
    """Where an interrupted run stopped (its newest checkpoint) and the command that
    resumes it: the same command (the run name finds the checkpoints)."""
    from ft_dist.layout import run_dir
    from ft_dist.train.methods import ensemble_method
    from ft_dist.train.session import latest_complete_checkpoint

    command = ["ft-dist", "train", args.config, *args.overrides]
    if args.group:
        command += ["--group", args.group]
    resume = shlex.join(command)
    if ensemble_method(cfg.ensemble.method).separate_runs:
        return (
            "ft-dist train: stopped by Ctrl-C; each member keeps its newest checkpoint under "
            f"{run_dir(cfg.train)}; resume with: {resume}"
        )
    newest = latest_complete_checkpoint(run_dir(cfg.train))
    if newest is None:
        return (
            f"ft-dist train: stopped by Ctrl-C before the first checkpoint of "
            f"{run_dir(cfg.train)}; start again with: {resume}"
        )
    return (
        f"ft-dist train: stopped by Ctrl-C at {checkpoint_position(Path(newest))} (checkpoint "
        f"{newest}); resume with: {resume}"
    )


def checkpoint_position(path: Path) -> str:
    """The step of a checkpoint, from its meta.json: "step 40 of 64 (2.50 of 4 epochs
    done)"; checkpoints of older versions name the step only."""
    from ft_dist.train.checkpoint import META_FILE

    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    step = meta.get("step", path.name.lstrip("0") or "0")
    total = f" of {meta['total_steps']}" if "total_steps" in meta else ""
    done = ""
    if "epochs_done" in meta and "num_epochs" in meta:
        done = f" ({meta['epochs_done']:.2f} of {meta['num_epochs']} epochs done)"
    return f"step {step}{total}{done}"


def train_member(cfg, group: str | None) -> int:
    from ft_dist.train.worker import fit

    run = fit(cfg, group=group)
    for line in summary_lines(run):
        print(line)
    print(run, flush=True)
    return 0


def train_ensemble(cfg) -> int:
    """DST Ensemble: all members concurrently (ft_dist.orchestrate.dst_ensemble); prints EXP_DIR last."""
    from ft_dist.orchestrate.dst_ensemble import fit_dst_ensemble

    exp_dir, outcomes = fit_dst_ensemble(cfg)
    for outcome in outcomes:
        status = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
        print(f"member {outcome.member}: {outcome.run_dir} {status}")
    print(exp_dir, flush=True)
    return 0 if all(outcome.error is None for outcome in outcomes) else 1
