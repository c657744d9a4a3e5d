"""`ft-dist sweep`: a grid or random search over a run config, scheduled by Ray Tune.

    plan = plan_sweep(SweepOptions(...))      # sweep_plan.py: every trial checked, no Ray
    rows = run_sweep(plan)                     # this module: Ray Tune runs the trials

Scheduling is Ray Tune's (the Tuner API), as for the DST Ensemble (dst_ensemble.py): one
Tune trial per run, whose function trains it with `ft_dist.train.worker.fit` (its own
Ray Train worker group, checkpoints, lock and definition). The trial reserves a token of
the head node; the run's workers hold the CPUs/GPUs. `--max-concurrent` defaults to the
number of runs whose workers fit the cluster at once.

Per-epoch metrics reach Tune from inside the trial: Ray Train's controller hands each
report of the run's rank 0 to Tune's `TuneReportCallback` (`EpochReports` here, which
forwards the ones that carry the sweep's metric); the run's session reports every epoch
when it has such a callback (worker.RaySession). ASHA (`--scheduler asha`) stops trials on
those reports, with the epoch as its time. A run's last epoch is not forwarded: stopping a
trial there would only cost it its summary; the trial reports its final metrics itself.
A stop reaches the run when Tune ends the trial's actor (the run's Ray Train controller
and workers go with it), a few seconds after the decision: the run may train on briefly,
and keeps its checkpoints (an ordinary run: `ft-dist train` can continue it).

Re-running the command resumes the sweep: Tune's experiment state in SWEEP_DIR/tune is
restored (finished and stopped trials stay as they are, unfinished and failed ones run
again), and each run resumes from its own checkpoints. A trial whose run already finished
trains nothing.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ft_dist.config import RunConfig, save_config
from ft_dist.layout import config_path, run_dir, summary_path, tune_dir
from ft_dist.orchestrate.dst_ensemble import DRIVER_RESOURCES, is_finished
from ft_dist.orchestrate.sweep_plan import SweepPlan, check_record, write_record
from ft_dist.orchestrate.sweep_table import Reported, Row, collect_rows, write_results
from ft_dist.runlock import RunLock
from ft_dist.utils import first_line

TRIAL_KEY = "run"  # the one key of Tune's param_space: which run a trial trains


def run_sweep(plan: SweepPlan, log: Any = sys.stderr) -> list[Row]:
    """Check every trial, run the sweep on Ray Tune, write the table and plot; returns the
    rows, best first. One sweep at a time per SWEEP_DIR (its run lock)."""
    with RunLock(plan.dir):
        resuming = check_record(plan)
        check_trials(plan)
        write_record(plan)
        for trial in plan.trials:  # a DST Ensemble trial's own record, as fit_dst_ensemble's
            if plan.separate_members:
                save_config(trial.cfg, config_path(trial.dir))
        from ft_dist.preflight import check_cluster
        from ft_dist.train.worker import connect

        connect(plan.trials[0].cfg.ray.address)
        runs = all_runs(plan)
        widest = max(runs.values(), key=lambda cfg: cfg.train.num_workers)
        check_cluster(widest)
        concurrent = plan.options.max_concurrent or default_concurrency(widest)
        print(
            f"ft-dist sweep: {len(plan.trials)} trials ({len(runs)} runs) in {plan.dir}, "
            f"up to {concurrent} at once{', resuming' if resuming else ''}",
            file=log,
            flush=True,
        )
        with contextlib.redirect_stdout(log):  # Tune's banner: stdout keeps the table only
            results = tuner(plan, runs, concurrent).fit()
        reported = {
            result.config[TRIAL_KEY]: Reported(
                dict(result.metrics or {}),
                None if result.error is None else first_line(result.error),
            )
            for result in results
        }
        rows = collect_rows(plan, reported)
        write_results(plan, rows)
        return rows


def all_runs(plan: SweepPlan) -> dict[str, RunConfig]:
    return {key: cfg for trial in plan.trials for key, cfg in trial.runs.items()}


def check_trials(plan: SweepPlan) -> None:
    """What `ft-dist train` checks before Ray starts, for every run of the sweep: a resume
    continues the run it resumes (definition.py), and the data, model and output dirs."""
    from ft_dist.preflight import check_inputs
    from ft_dist.train.definition import settle_on_driver

    checked: set[str] = set()
    for cfg in all_runs(plan).values():
        settle_on_driver(cfg)
        # The inputs depend on the values, not on the run directory: check each once.
        key = json.dumps(cfg.model_dump(mode="json", exclude={"train": {"run_name"}}), default=str)
        if key not in checked:
            checked.add(key)
            check_inputs(cfg)


def default_concurrency(cfg: RunConfig) -> int:
    """How many runs' worker groups fit the cluster at once (at least one)."""
    import ray

    from ft_dist.preflight import room_for_workers, workers_to_start
    from ft_dist.private_api import autoscaler_max_resources
    from ft_dist.train.config import worker_resources

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    ceiling = autoscaler_max_resources()
    room = room_for_workers([ceiling] if ceiling else nodes, worker_resources(cfg.ray))
    return max(1, room // workers_to_start(cfg.train))


def tuner(plan: SweepPlan, runs: dict[str, RunConfig], concurrent: int) -> Any:
    """A new Tuner, or the one restored from SWEEP_DIR/tune (a re-run resumes)."""
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, runs=runs, group=plan.name, metric=plan.metric),
        DRIVER_RESOURCES,
    )
    path = tune_dir(plan.dir)
    experiment = path / plan.name
    if tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search(list(runs))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent, scheduler=scheduler(plan, runs)
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=str(path.resolve()),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
        ),
    )


def scheduler(plan: SweepPlan, runs: dict[str, RunConfig]) -> Any:
    """ASHA on the metric, the epoch as its time; None = Tune's FIFO (every trial runs)."""
    if plan.options.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric=plan.metric,
        mode=plan.mode,
        max_t=max(cfg.num_epochs for cfg in runs.values()),
        grace_period=plan.options.grace_epochs,
        reduction_factor=plan.options.reduction_factor,
    )


def _run_trial(
    trial_config: dict[str, Any], runs: dict[str, RunConfig], group: str, metric: str
) -> None:
    """One Tune trial: train one run to its end (resuming it), then report its final
    metrics. A run that finished before trains nothing. Its W&B run (in the sweep's group)
    and progress lines are named by its Tune key: trial-<hash>, or trial-<hash>/member_<i>,
    as every trial's members have the same run names."""
    key = trial_config[TRIAL_KEY]
    cfg = runs[key]
    if not is_finished(cfg):
        from ft_dist.train.worker import fit

        fit(cfg, group=group, callbacks=[EpochReports(metric, cfg.num_epochs)], name=key)
    summary = json.loads(summary_path(run_dir(cfg.train)).read_text())
    tune.report({**summary.get("metrics", {}), "epoch": float(summary["epochs"])})


class EpochReports(TuneReportCallback):
    """Tune's report callback (it runs in Ray Train's controller, built in the trial: it
    joins the trial's Tune session), forwarding only the reports that carry the sweep's
    metric, before the run's last epoch."""

    def __init__(self, metric: str, last_epoch: int) -> None:
        super().__init__()
        self.metric, self.last_epoch = metric, last_epoch

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        first = metrics[0] if metrics else {}
        if self.metric in first and float(first.get("epoch", 0.0)) < self.last_epoch:
            super().after_report(run_context, metrics, None)
