"""`ft-dist train CONFIG [key=value ...]`: train one member on a Ray Train worker group.

Checks the data, splits, shards, model shape and the cluster's room for the workers first
(ft_dist.preflight), then joins the Ray cluster named by `ray.address` or RAY_ADDRESS
(inside `ray job submit` that is the job's own cluster), or starts a local one. Progress
lines from rank 0 stream to this terminal while it runs; the run directory is printed as
the very last line of output, so scripts can do `RUN=$(ft-dist train cfg.yaml | tail -n 1)`.

With `ensemble.method: dst_ensemble` it trains all M members of a DST Ensemble concurrently
(one worker group each, scheduled by Ray Tune) and prints the experiment directory last.

One run at a time per run directory: the run lock (ft_dist/runlock.py) is taken first, and
a second run there is refused in one line naming the holder. A resume must continue the
run it resumes (ft_dist/train/definition.py): a changed model, data, sparsity, optimizer,
schedule, seed, method or global batch is refused in one line before Ray starts, unless
each changed key is named with --allow-change KEY (recorded in the run); on another
number of workers the run keeps its global batch (accumulation makes up for the workers).
Ctrl-C (exit 130) and SIGTERM (`ray job stop`, `kill`; exit 143) end with one line: the
step of the checkpoint kept and the command that resumes the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
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
        description="\n\n".join(__doc__.split("\n\n")[1:4]),
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
    parser.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="resume although KEY of the run's definition changed (repeatable, e.g. "
        "--allow-change optim.lr); the change is recorded in RUN_DIR/definition.json",
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

    import ray

    from ft_dist.layout import run_dir
    from ft_dist.preflight import check_cluster, check_inputs
    from ft_dist.runlock import RunLock
    from ft_dist.train.methods import ensemble_method
    from ft_dist.train.worker import ClusterBusyError, WorkerError, absolute_paths, connect

    cfg = absolute_paths(cfg)  # before anything is written: workers run in other dirs
    stop = StopSignals(run_dir(cfg.train))
    # The lock first: a second run on this directory is refused at once, before it checks,
    # starts or writes anything (RunLockedError, one line naming the holder).
    with stop, RunLock(run_dir(cfg.train)):
        try:
            # A resume that would train another run is refused here, in one line, and the
            # run's global batch kept on another number of workers (train/definition.py).
            cfg = settle_definitions(cfg, args.allow_change)
            # Mistakes that fail every try are found here, before Ray starts any worker.
            info = check_inputs(cfg)
            from ft_dist.data.recipes import recipe_lines
            from ft_dist.preflight import run_advice

            # Which preprocessing, and why (or a warning); a DST schedule that won't explore.
            for line in [*recipe_lines(cfg.data), *run_advice(cfg, info)]:
                print(f"ft-dist train: {line}", file=sys.stderr, flush=True)
            connect(cfg.ray.address)
            stop.install()  # again: ray.init puts its own SIGTERM handlers (Python, C++) first
            check_cluster(cfg)
            if ensemble_method(cfg.ensemble.method).separate_runs:
                return train_ensemble(cfg)
            return train_member(cfg, args.group)
        except (ClusterBusyError, WorkerError) as error:
            print(f"ft-dist train: error: {error}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, SystemExit) as interrupt:
            if isinstance(interrupt, SystemExit) and not ray_sigint_exit(interrupt):
                raise
            if stop.name is not None:  # now: `ray job stop` SIGKILLs 3 s after its SIGTERM
                print(stopped_line(cfg, args, stop.name), file=sys.stderr, flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
    if stop.name is not None:
        return 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM
    # Ctrl-C: last, after Ray's own lines ("Received SIGINT ...")
    print(stopped_line(cfg, args, "Ctrl-C"), file=sys.stderr, flush=True)
    return 128 + signal.SIGINT


def settle_definitions(cfg, allow_change: list[str]):
    """`definition.settle_on_driver` for the run, or for each member of a DST Ensemble."""
    from ft_dist.train.definition import settle_on_driver
    from ft_dist.train.methods import ensemble_method

    if not ensemble_method(cfg.ensemble.method).separate_runs:
        return settle_on_driver(cfg, allow_change)
    from ft_dist.orchestrate.dst_ensemble import member_config

    for member in range(1, cfg.ensemble.num_members + 1):
        settle_on_driver(member_config(cfg, member), allow_change)  # each fit keeps its batch
    return cfg


class Stopped(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (a KeyboardInterrupt, so that Ray's and
    our own clean-up treat it alike)."""


class StopSignals:
    """SIGTERM (`ray job stop`, `kill`, a scheduler's preemption) stops `ft-dist train` as
    Ctrl-C does: one line saying where the run stopped and how to resume it.

    Ray's driver, once connected, answers SIGTERM with a C++ stack dump on the console
    (absl's failure-signal handler, installed by ray.init) and `sys.exit(15)` (no line of
    ours). `install()` after `connect` puts this handler in their place; the stack of the
    driver at the signal goes to RUN_DIR/driver.log instead of the console. A second
    SIGTERM while stopping is ignored (the first one's clean-up is under way).
    """

    def __init__(self, run: Path) -> None:
        self.run = run
        self.name: str | None = None  # the signal that stopped the run, once one did
        self._previous: object = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (ft-dist train runs there)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._previous is None:
            self._previous = signal.SIG_DFL if previous is None else previous

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self.name is not None:
            return
        self.name = "SIGTERM"
        self._log(frame)
        raise Stopped("SIGTERM")

    def _log(self, frame: object) -> None:
        from ft_dist.layout import driver_log

        when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        try:
            with open(driver_log(self.run), "a") as log:
                log.write(
                    f"{when}: SIGTERM to ft-dist train (pid {os.getpid()} on "
                    f"{socket.gethostname()}); the driver was at:\n{stack}\n"
                )
        except OSError:
            pass  # the line on the console says what matters

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)


def ray_sigint_exit(stop: SystemExit) -> bool:
    """The exit of Ray Train's own Ctrl-C handler: it aborts the run and calls sys.exit(0),
    which Ray's blocked `ray.get` turns into SystemExit(1) carrying ray_terminate_msg
    "SystemExit is raised (sys.exit is called). Exit code: 0." (measured, Ray 2.60)."""
    if stop.code in (0, None):
        return True
    return "Exit code: 0." in str(getattr(stop, "ray_terminate_msg", ""))


def stopped_line(cfg, args: argparse.Namespace, by: str = "Ctrl-C") -> str:
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
            f"ft-dist train: stopped by {by}; each member keeps its newest checkpoint under "
            f"{run_dir(cfg.train)}; resume with: {resume}"
        )
    newest = latest_complete_checkpoint(run_dir(cfg.train))
    if newest is None:
        return (
            f"ft-dist train: stopped by {by} before the first checkpoint of "
            f"{run_dir(cfg.train)}; start again with: {resume}"
        )
    return (
        f"ft-dist train: stopped by {by} at {checkpoint_position(Path(newest))} (checkpoint "
        f"kept at {newest}); resume with: {resume}"
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
