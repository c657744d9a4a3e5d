"""Run plans: what the loop does at each epoch, asked at fixed points, never branched on.

The loop calls ``plan.epoch(e)`` before every epoch and acts on the answer: the LR factor
(None: the optimizer's own schedule), which ticket this epoch is a candidate for, whether
the ticket is written after it, and whether a global exploration follows. A single run
(dense, DST, static, or one DST Ensemble member) is `SinglePlan`; EDST is `EDSTPlan`. A
new ensemble method is a new plan class plus its entry in train/methods.py
(docs/architecture.md).

Plans are pure functions of the epoch (and the step, for the drop-fraction decay period):
a resumed run recomputes exactly where it is, so they hold nothing for the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ft_dist.config import RunConfig
from ft_dist.train.edst import drop_decay_period, epoch_plan
from ft_dist.train.methods import ensemble_method


@dataclass(frozen=True)
class EpochActions:
    """What the loop does in and after one epoch."""

    lr_scale: float | None  # multiplies the base LR all epoch; None = optimizer schedule
    ticket: int | None  # the ticket this epoch's weights are a candidate for (1..M), if any
    member: int  # the ensemble member that ticket becomes (recorded in it)
    validate: bool  # validate after this epoch even off the eval_every_epochs grid
    write_ticket: bool  # finalise `ticket` after this epoch
    explore: tuple[float, str] | None  # (drop fraction q, growth) of a global exploration


class RunPlan(Protocol):
    num_epochs: int
    ticket_choice: str  # "best" (validation accuracy) or "last"

    def epoch(self, epoch: int) -> EpochActions: ...

    def decay_period(self, step: int) -> tuple[int, int] | None:
        """(start step, length) of the drop-fraction cosine period ``step`` is in; None =
        the sparsity schedule's own period."""


@dataclass(frozen=True)
class SinglePlan:
    """One model, one ticket: written from the best-validation (or last) epoch at the end."""

    num_epochs: int
    member: int
    ticket_choice: str
    steps_per_epoch: int
    cosine_over_run: bool  # cosine drop fraction with no stop_step: decay over the run

    def epoch(self, epoch: int) -> EpochActions:
        last = epoch == self.num_epochs - 1
        return EpochActions(None, 1, self.member, False, write_ticket=last, explore=None)

    def decay_period(self, step: int) -> tuple[int, int] | None:
        if not self.cosine_over_run:
            return None
        return 0, self.num_epochs * self.steps_per_epoch


@dataclass(frozen=True)
class EDSTPlan:
    """EDST (SPEC §5): exploration, then M refinement phases each ending in a ticket, with a
    global exploration between phases."""

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


def build_plan(cfg: RunConfig, steps_per_epoch: int) -> RunPlan:
    """The plan of this run's method (its `plan` in train/methods.py ENSEMBLE_METHODS)."""
    return ensemble_method(cfg.ensemble.method).plan(cfg, steps_per_epoch)


def cosine_without_stop(cfg: RunConfig) -> bool:
    sparsity = cfg.sparsity
    return sparsity.drop_schedule == "cosine" and sparsity.stop_step is None
