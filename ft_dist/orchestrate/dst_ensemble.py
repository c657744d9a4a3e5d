"""DST Ensemble (SPEC §6): M independent DST members trained concurrently on the cluster.

Each member is an ordinary run (`ft_dist.train.worker.fit`): its own Ray Train worker
group, checkpoints and tickets, in EXP_DIR/members/member_<i>/, with `train.member = i`
(which changes every seed: weights, initial mask, data order, mask evolution).

Scheduling is Ray Tune's, not ours: one Tune trial per member whose function launches
that member's `TorchTrainer` (the Ray Train V2 + Tune pattern). The trial itself reserves
(almost) no resources; the member's workers do, so members whose workers do not fit wait in
Ray's queue until resources free up, and `ensemble.dst_ensemble.max_concurrent_members` caps how
many start at once. Tune runs trials independently: one member failing (after its own
`ray.max_failures` restarts) stops neither the others nor their tickets. Re-running the
same experiment resumes each unfinished member from its own checkpoints; members whose
summary.json says they finished are not launched again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_dist.config import RunConfig, config_from_dict, config_to_dict, save_config
from ft_dist.layout import (
    config_path,
    member_dir,
    member_name,
    members_dir,
    members_storage_path,
    run_dir,
    summary_path,
    tune_dir,
)
from ft_dist.runlock import RunLock
from ft_dist.train.methods import ensemble_method

# Ray gives the head node this resource. A member's trial drives its TorchTrainer, whose
# controller Ray places on the trial's node: on a spot worker node, losing that node would
# fail the member outright; on the head, it only costs the member a restart of its workers.
HEAD_NODE_RESOURCE = "node:__internal_head__"
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20, HEAD_NODE_RESOURCE: 0.001}


def member_config(cfg: RunConfig, member: int) -> RunConfig:
    """The run config of member `member` (1..M) of the DST Ensemble `cfg`."""
    if not 1 <= member <= cfg.ensemble.num_members:
        raise ValueError(f"member {member} is outside 1..ensemble.num_members")
    exp_dir = run_dir(cfg.train)
    data = config_to_dict(cfg)
    data["train"].update(
        member=member, run_name=member_name(member), output_dir=str(members_dir(exp_dir))
    )
    if cfg.ray.storage_path:  # keep members of different experiments apart in shared storage
        data["ray"]["storage_path"] = members_storage_path(cfg.ray.storage_path, cfg.train.run_name)
    return config_from_dict(data, source=f"{cfg.train.run_name} member {member}")


def is_finished(member_cfg: RunConfig) -> bool:
    """A member whose summary.json records all its epochs needs no Ray Train fit at all."""
    path = summary_path(run_dir(member_cfg.train))
    if not path.is_file():
        return False
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return summary.get("epochs") == member_cfg.num_epochs and bool(summary.get("tickets"))


@dataclass(frozen=True)
class MemberOutcome:
    member: int
    run_dir: Path
    error: str | None


def _train_member(
    trial_config: dict[str, Any],
    members: dict[int, RunConfig],
    loop: Callable[..., Any] | None,
    group: str,
) -> None:
    """One Tune trial: train one member to the end (resuming it if it ran before)."""
    from ft_dist.train.worker import fit

    fit(members[int(trial_config["member"])], loop, group=group)


def fit_dst_ensemble(
    cfg: RunConfig, loop: Callable[..., Any] | None = None
) -> tuple[Path, list[MemberOutcome]]:
    """Train all members of a DST Ensemble; returns EXP_DIR and each member's outcome.

    `loop` replaces the per-worker training loop (tests); None = ft_dist.train.loop.train.
    """
    if not ensemble_method(cfg.ensemble.method).separate_runs:
        raise ValueError(
            f"ensemble.method={cfg.ensemble.method!r} trains its members in one run; fit_dst_ensemble "
            "trains methods whose members are separate runs"
        )
    with RunLock(run_dir(cfg.train)):  # members lock their own run dirs
        return _fit_members(cfg, loop)


def _fit_members(
    cfg: RunConfig, loop: Callable[..., Any] | None
) -> tuple[Path, list[MemberOutcome]]:
    from ray import tune

    from ft_dist.train.worker import connect

    exp_dir = run_dir(cfg.train)
    save_config(cfg, config_path(exp_dir))
    num_members = cfg.ensemble.num_members
    members = {m: member_config(cfg, m) for m in range(1, num_members + 1)}
    pending = {m: c for m, c in members.items() if not is_finished(c)}
    if not pending:
        return exp_dir, [MemberOutcome(m, member_dir(exp_dir, m), None) for m in members]
    connect(cfg.ray.address)
    # The trial only drives the member's TorchTrainer, whose workers hold the CPUs/GPUs.
    # Tune refuses an empty request, so the driver asks for a token of memory, not a CPU
    # fraction (2 workers x 1 CPU must still fit on a 2-CPU cluster next to the driver),
    # and a sliver of the head node, so a lost worker node never takes a trial with it.
    trainable = tune.with_resources(
        tune.with_parameters(_train_member, members=pending, loop=loop, group=cfg.train.run_name),
        DRIVER_RESOURCES,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"member": tune.grid_search(list(pending))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.ensemble.dst_ensemble.max_concurrent_members or num_members
        ),
        run_config=tune.RunConfig(
            name=cfg.train.run_name,
            storage_path=str(tune_dir(exp_dir).resolve()),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
        ),
    )
    results = tuner.fit()
    outcomes = [MemberOutcome(m, member_dir(exp_dir, m), None) for m in members if m not in pending]
    for result in results:
        member = int(result.config["member"])
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        outcomes.append(MemberOutcome(member, member_dir(exp_dir, member), error))
    return exp_dir, sorted(outcomes, key=lambda outcome: outcome.member)
