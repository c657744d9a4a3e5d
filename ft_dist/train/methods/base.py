"""What an ensemble method is: the facts of its table entry, and the plan the loop asks.

The loop calls ``plan.epoch(e)`` before every epoch and acts on the answer: the LR factor
(None: the optimizer's own schedule), which ticket this epoch is a candidate for, whether
the ticket is written after it, and whether a global exploration follows. Plans are pure
functions of the epoch (and the step, for the drop-fraction decay period): a resumed run
recomputes exactly where it is, so they hold nothing for the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.train.ensemble_config import EnsembleConfig


@dataclass(frozen=True)
class MethodEpochs:
    """Epochs of a run of one method (SPEC §5, §6)."""

    per_run: int  # epochs one run trains (EDST: t_ex + M t_re; a DST Ensemble member: E)
    total: int  # epochs trained by all its runs together
    members: int  # models the ensemble averages at inference
    reference: int  # epochs of the one dense run it is priced against
    text: str  # how the epochs come about, for `ft-dist flops`


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
class EnsembleMethod:
    """One ensemble method: every fact the rest of the code asks of it."""

    label: str
    summary: str
    separate_runs: bool  # members are independent runs (orchestrate/dst_ensemble.py trains them)
    own_schedule: bool  # the method derives train.epochs from its own section
    phased: bool  # explores, then refines M phases from ensemble.edst (compare, bench channels)
    epochs: Callable[[EnsembleConfig, int], MethodEpochs]
    check_section: Callable[[EnsembleConfig], None]  # rules within the ensemble: section
    check: Callable[[RunConfig], None]  # rules across sections
    plan: Callable[[RunConfig, int], RunPlan]
    # Rules that need the run's steps: (cfg, optimizer steps per epoch, global batch);
    # preflight calls it once the data is known, before any worker starts.
    check_steps: Callable[[RunConfig, int, int], None] = field(default=lambda cfg, s, b: None)
    # An `ensemble:` section (without the method) that runs it in a few steps: the contract
    # tests (tests/train/test_contracts.py) train, resume and price every entry with it.
    example: dict = field(default_factory=dict)


def check_ticket(cfg: RunConfig) -> None:
    """A best-validation ticket needs a validation split."""
    if cfg.train.ticket == "best" and not cfg.data.val_split:
        raise ValueError(
            "train.ticket=best keeps the epoch with the best validation accuracy: set "
            "data.val_split, or use train.ticket=last"
        )


def cosine_without_stop(cfg: RunConfig) -> bool:
    """A cosine drop fraction with no stop_step decays over the plan's periods."""
    sparsity = cfg.sparsity
    return sparsity.drop_schedule == "cosine" and sparsity.stop_step is None
