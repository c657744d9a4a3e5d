"""EDST (SPEC §5): one DST run that explores, then refines M phases, each ending in a ticket,
with a global exploration between phases. The phase arithmetic is train/edst.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ft_dist.sparse.schedule import UpdateSchedule
from ft_dist.sparse.scores import growth_criterion
from ft_dist.train.edst import drop_decay_period, epoch_plan, total_epochs
from ft_dist.train.methods.base import (
    EnsembleMethod,
    EpochActions,
    MethodEpochs,
    cosine_without_stop,
)

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.train.ensemble_config import EDSTConfig, EnsembleConfig


@dataclass(frozen=True)
class EDSTPlan:
    """Exploration, then M refinement phases each ending in a ticket, with a global
    exploration between phases."""

    cfg: RunConfig
    steps_per_epoch: int

    @property
    def num_epochs(self) -> int:
        return self.cfg.num_epochs

    @property
    def ticket_choice(self) -> str:
        return self.cfg.ensemble.edst.ticket

    def epoch(self, epoch: int) -> EpochActions:
        edst, members = self.cfg.ensemble.edst, self.cfg.ensemble.num_members
        plan = epoch_plan(epoch, members, edst)
        refining = plan.phase >= 1
        explore = (edst.explore_drop_fraction, edst.explore_growth) if plan.explore_after else None
        return EpochActions(
            lr_scale=plan.lr_scale,
            ticket=plan.phase if refining else None,  # exploration epochs are no candidates
            member=max(plan.phase, 1),
            validate=refining,  # every refinement epoch competes for its phase's ticket
            write_ticket=refining and plan.phase_end,
            explore=explore,
        )

    def decay_period(self, step: int) -> tuple[int, int] | None:
        if not cosine_without_stop(self.cfg):
            return None
        edst, members = self.cfg.ensemble.edst, self.cfg.ensemble.num_members
        period = drop_decay_period(step, self.steps_per_epoch, members, edst)
        return period.start, period.length


def _section(ensemble: EnsembleConfig) -> EDSTConfig:
    if ensemble.edst is None:
        raise ValueError(
            f"ensemble.method '{ensemble.method}' needs an ensemble.edst section with "
            "exploration_epochs and refinement_epochs (e.g. 150 and 100)"
        )
    return ensemble.edst


def _epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    edst, members = _section(ensemble), ensemble.num_members
    total = total_epochs(members, edst)
    text = (
        f"t_ex={edst.exploration_epochs} + {members} x t_re={edst.refinement_epochs} "
        f"= {total} epochs in one run"
    )
    reference = edst.exploration_epochs + edst.refinement_epochs
    return MethodEpochs(total, total, members, reference, text)


def _check(cfg: RunConfig) -> None:
    edst = _section(cfg.ensemble)
    if not cfg.sparsity.is_dynamic:
        raise ValueError(
            "ensemble.method=edst needs dynamic sparse training: set sparsity.density < 1 "
            "and sparsity.update=dynamic"
        )
    expected = total_epochs(cfg.ensemble.num_members, edst)
    if "epochs" in cfg.train.model_fields_set and cfg.train.epochs != expected:
        raise ValueError(
            f"train.epochs={cfg.train.epochs} disagrees with EDST's exploration_epochs + "
            f"num_members × refinement_epochs = {expected}: remove train.epochs"
        )
    if edst.ticket == "best" and not cfg.data.val_split:
        raise ValueError(
            "ensemble.edst.ticket=best picks tickets by validation accuracy: set "
            "data.val_split, or use ensemble.edst.ticket=last"
        )
    explore = growth_criterion(edst.explore_growth)
    if explore.needs_every_step_gradient and edst.explore_growth != cfg.sparsity.growth:
        raise ValueError(
            f"ensemble.edst.explore_growth={edst.explore_growth} reads a gradient EMA kept "
            f"only when sparsity.growth={edst.explore_growth}: set that, or explore with a "
            "criterion that needs no EMA (gradient or random)"
        )


def phases_without_update(cfg: RunConfig, steps_per_epoch: int, global_batch: int) -> list[int]:
    """The refinement phases (1..M) in which the DST schedule makes no regular update: no
    step k·ΔT (k >= 1, at most sparsity.stop_step) among the phase's steps, which are
    ((t_ex + (m-1)·t_re)·S, (t_ex + m·t_re)·S] for S optimizer steps per epoch."""
    edst, members = _section(cfg.ensemble), cfg.ensemble.num_members
    schedule = UpdateSchedule.from_config(cfg.sparsity, global_batch)
    every = schedule.every_steps
    empty = []
    for phase in range(1, members + 1):
        start = (edst.exploration_epochs + (phase - 1) * edst.refinement_epochs) * steps_per_epoch
        end = start + edst.refinement_epochs * steps_per_epoch
        first = (start // every + 1) * every  # the first update step after the phase starts
        if not (first <= end and schedule.is_update_step(first)):
            empty.append(phase)
    return empty


def _check_steps(cfg: RunConfig, steps_per_epoch: int, global_batch: int) -> None:
    """The member count the schedule holds: every refinement phase makes at least one
    regular DST update. A phase without one trains the previous ticket's mask after one
    exploration only -- its ticket is no DST run at the refinement LR -- so such a phase
    is no meaningful member (a phase shorter than ΔT, or past sparsity.stop_step)."""
    empty = phases_without_update(cfg, steps_per_epoch, global_batch)
    if not empty:
        return
    edst, members, sparsity = cfg.ensemble.edst, cfg.ensemble.num_members, cfg.sparsity
    every = UpdateSchedule.from_config(sparsity, global_batch).every_steps
    phase_steps = edst.refinement_epochs * steps_per_epoch
    which = _phase_ranges(empty)
    if phase_steps >= every:  # every phase is long enough: the updates stop before these
        last = (edst.exploration_epochs + (members - 1) * edst.refinement_epochs) * steps_per_epoch
        needed = (last // every + 1) * every  # the last phase's first update step
        held = empty[0] - 1  # phases 1..held make one
        fix = f"set sparsity.stop_step>={needed}"
        if held >= 1:
            fix = (
                f"the schedule holds at most {held} member(s): set ensemble.num_members<={held}, "
                f"or {fix}"
            )
    else:
        epochs = -(-every // steps_per_epoch)  # ceil: epochs that hold one ΔT
        fix = (
            f"lower the DST update interval (sparsity.update_every_steps / "
            f"update_every_samples) to at most {phase_steps} steps or set "
            f"ensemble.edst.refinement_epochs>={epochs}"
            + (", and keep sparsity.stop_step past the last phase" if sparsity.stop_step else "")
        )
    stop = f"; none after sparsity.stop_step={sparsity.stop_step}" if sparsity.stop_step else ""
    raise ValueError(
        f"ensemble.num_members={members}: EDST refinement phase(s) {which} would make no DST "
        f"update (a phase is refinement_epochs={edst.refinement_epochs} x {steps_per_epoch} "
        f"steps = {phase_steps} steps; one update every {every} steps{stop}), so their tickets "
        "would only fine-tune the mask of the exploration before them (rule: every refinement "
        f"phase makes at least one DST update); {fix}"
    )


def _phase_ranges(phases: list[int]) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    runs: list[list[int]] = []
    for phase in phases:
        if runs and phase == runs[-1][-1] + 1:
            runs[-1].append(phase)
        else:
            runs.append([phase])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


ENTRY = EnsembleMethod(
    "EDST",
    "one DST run that explores, then refines M times: M tickets (SPEC §5)",
    separate_runs=False,
    own_schedule=True,
    phased=True,
    epochs=_epochs,
    check_section=_section,
    check=_check,
    plan=EDSTPlan,
    check_steps=_check_steps,
    example={"num_members": 2, "edst": {"exploration_epochs": 1, "refinement_epochs": 1}},
)
