"""A sweep's trials, each an ordinary run, checked before any trial starts (no Ray).

    plan = plan_sweep(SweepOptions("configs/demo_dst.yaml", ("optim.lr=0.05,0.1",)))

Every trial is the config with its fixed overrides and its swept values, in its own run
directory SWEEP_DIR/trial-<hash of the swept values> (SWEEP_DIR = train.output_dir /
--name): it resumes, evaluates and exports like any run. A DST Ensemble trial is an
experiment directory whose members are separate runs (orchestrate/dst_ensemble.py): the
sweep runs each member as a Tune trial of its own (flattened), so ASHA, which would stop
members of one ensemble at different epochs, is refused for it.

The sweep directory (its paths: layout.py): SWEEP_DIR/sweep.json records what the sweep is
(config, overrides, points, metric, scheduler), so a re-run must be the same sweep to
resume it; SWEEP_DIR/tune holds Ray Tune's experiment state (a re-run restores it);
SWEEP_DIR/trial-<hash> is one run directory per trial; results.csv, results.md and plot.png
the table (best first) and the plot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ft_dist.config import RunConfig, load_config
from ft_dist.layout import sweep_record_path
from ft_dist.orchestrate.sweep_space import (
    Dimension,
    as_overrides,
    draw_points,
    load_space,
    split_overrides,
    trial_name,
)
from ft_dist.train.methods import ensemble_method
from ft_dist.utils import write_text_atomic

SCHEDULERS = ("none", "asha")
# Keys each trial sets itself: its run directory and its member number.
OWN_KEYS = ("train.run_name", "train.output_dir", "train.member")


@dataclass(frozen=True)
class SweepOptions:
    """What `ft-dist sweep` was asked (its command-line options)."""

    config: str
    overrides: tuple[str, ...] = ()
    space: str | None = None
    num_samples: int = 1
    seed: int = 0
    scheduler: str = "none"
    metric: str | None = None
    grace_epochs: int = 1
    reduction_factor: float = 2.0
    max_concurrent: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its run (the experiment, for a DST Ensemble) and the runs Ray
    Tune schedules for it (the run itself, or each member)."""

    name: str
    values: dict[str, Any]
    cfg: RunConfig
    runs: dict[str, RunConfig] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return Path(self.cfg.train.output_dir) / self.name


@dataclass(frozen=True)
class SweepPlan:
    options: SweepOptions
    name: str
    dir: Path
    trials: list[Trial]
    dims: dict[str, Dimension]
    keys: list[str]  # the swept keys, grid first
    metric: str
    mode: str  # "min" or "max"

    @property
    def separate_members(self) -> bool:
        return ensemble_method(self.trials[0].cfg.ensemble.method).separate_runs

    def record(self) -> dict[str, Any]:
        """What sweep.json keeps: a re-run must plan the same sweep to resume it."""
        options = asdict(self.options)
        del options["max_concurrent"]  # how fast, not what: a re-run may change it
        return {
            "options": options,
            "metric": self.metric,
            "mode": self.mode,
            "trials": {trial.name: trial.values for trial in self.trials},
        }


def plan_sweep(options: SweepOptions) -> SweepPlan:
    """Every trial's config, validated; any bad key or value is one ValueError line."""
    if options.scheduler not in SCHEDULERS:
        raise ValueError(
            f"--scheduler {options.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"
        )
    fixed, axes = split_overrides(list(options.overrides))
    dims = load_space(options.space) if options.space else {}
    keys = [*axes, *dims]
    for key in keys:
        if key in OWN_KEYS:
            raise ValueError(f"{key} cannot be swept: each trial sets it (its own run directory)")
    base = load_config(options.config, fixed)
    check_corners(options.config, fixed, axes, dims)
    points = draw_points(axes, dims, options.num_samples, options.seed)
    # Validated first (torch-free, a fraction of a second); then the paths made absolute
    # as the workers will see them, which loads torch and ray.
    configs = {
        trial_name(p): load_config(options.config, [*fixed, *as_overrides(p)]) for p in points
    }
    from ft_dist.train.worker import absolute_paths

    name = options.name or f"{base.train.run_name}-sweep"
    sweep_dir = Path(absolute_paths(base).train.output_dir) / name
    trials = {}
    for point in points:
        label = trial_name(point)
        own = {"output_dir": str(sweep_dir), "run_name": label}
        cfg = absolute_paths(configs[label])
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=own)})
        trials[label] = Trial(label, point, cfg, tune_runs(label, cfg))
    plan = SweepPlan(
        options,
        name,
        sweep_dir,
        list(trials.values()),
        dims,
        keys,
        *metric_and_mode(base, options.metric),
    )
    check_plan(plan)
    return plan


def check_corners(
    config: str, fixed: list[str], axes: dict[str, list[Any]], dims: dict[str, Dimension]
) -> None:
    """Every choice and both bounds of each sampled key validate (the other keys at their
    first value), so that a bad range fails now, whatever the draws."""
    first = {key: values[0] for key, values in axes.items()}
    first.update({key: dim.corners()[0] for key, dim in dims.items()})
    for key, dim in dims.items():
        for value in dim.corners():
            load_config(config, [*fixed, *as_overrides({**first, key: value})])


def tune_runs(label: str, cfg: RunConfig) -> dict[str, RunConfig]:
    """The runs Ray Tune schedules for one trial, by Tune key: the run itself, or each
    member of a DST Ensemble (flattened into the sweep)."""
    if not ensemble_method(cfg.ensemble.method).separate_runs:
        return {label: cfg}
    from ft_dist.layout import member_name
    from ft_dist.orchestrate.dst_ensemble import member_config

    members = range(1, cfg.ensemble.num_members + 1)
    return {f"{label}/{member_name(m)}": member_config(cfg, m) for m in members}


def metric_and_mode(cfg: RunConfig, metric: str | None) -> tuple[str, str]:
    """The metric trials are ranked (and ASHA stops them) by: the validation NLL by default;
    it must be one the loop reports after each epoch."""
    split = cfg.data.val_split
    if split is None:
        raise ValueError(
            f"{cfg.data.root}: the sweep ranks trials on the validation split, and "
            "data.val_split is null; set data.val_split (e.g. data.val_split=val)"
        )
    modes = {f"{split}/nll": "min", f"{split}/accuracy": "max"}
    metric = metric or f"{split}/nll"
    if metric not in modes:
        raise ValueError(f"--metric {metric!r}: choose {' or '.join(modes)} (reported each epoch)")
    return metric, modes[metric]


def check_plan(plan: SweepPlan) -> None:
    """Rules across trials: one validation split, and ASHA's needs."""
    splits = {trial.cfg.data.val_split for trial in plan.trials}
    if len(splits) > 1:
        raise ValueError(f"data.val_split differs between trials ({sorted(splits)}): keep one")
    if plan.options.scheduler != "asha":
        return
    if plan.separate_members:
        raise ValueError(
            "--scheduler asha would stop the members of one DST Ensemble at different epochs: "
            "sweep a DST Ensemble without it (each member is a trial), or sweep ensemble.method=edst"
        )
    for trial in plan.trials:
        every = trial.cfg.train.eval_every_epochs
        if every != 1:
            raise ValueError(
                f"--scheduler asha compares {plan.metric} after every epoch, but "
                f"train.eval_every_epochs={every}; set train.eval_every_epochs=1"
            )
    if plan.options.grace_epochs < 1 or plan.options.reduction_factor <= 1:
        raise ValueError("--grace-epochs must be >= 1 and --reduction-factor > 1")


# --------------------------------------------------------------------------- the record
def check_record(plan: SweepPlan) -> bool:
    """True when SWEEP_DIR already holds this sweep (a re-run resumes it); a different
    sweep there is refused in one line. False for a new sweep."""
    path = sweep_record_path(plan.dir)
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(plan.record()))  # through JSON, as it was written
    if old == new:
        return True
    what = next(key for key in new if old.get(key) != new[key])
    if what == "options":
        what = next(k for k in new["options"] if old["options"].get(k) != new["options"][k])
    raise ValueError(
        f"{plan.dir} holds another sweep ({what} changed; see {path}): give this one "
        "another --name, or re-run the command that started it to resume it"
    )


def write_record(plan: SweepPlan) -> Path:
    plan.dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(
        sweep_record_path(plan.dir), json.dumps(plan.record(), indent=2) + "\n"
    )
