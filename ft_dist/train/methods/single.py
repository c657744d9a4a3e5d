"""One model (dense, static sparse or DST, by the sparsity section): one ticket, written from
the best-validation (or last) epoch at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ft_dist.train.methods.base import (
    EnsembleMethod,
    EpochActions,
    MethodEpochs,
    check_ticket,
    cosine_without_stop,
)

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.train.ensemble_config import EnsembleConfig


@dataclass(frozen=True)
class SinglePlan:
    """One model, one ticket; also each member of a DST Ensemble (its own member index)."""

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


def single_plan(cfg: RunConfig, steps_per_epoch: int) -> SinglePlan:
    return SinglePlan(
        num_epochs=cfg.num_epochs,
        member=cfg.train.member,
        ticket_choice=cfg.train.ticket,
        steps_per_epoch=steps_per_epoch,
        cosine_over_run=cosine_without_stop(cfg),
    )


def _epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    return MethodEpochs(epochs, epochs, 1, epochs, f"{epochs} epochs")


def _check_section(ensemble: EnsembleConfig) -> None:
    if ensemble.num_members != 1:
        from ft_dist.train.methods import ENSEMBLE_METHODS

        ensembles = [name for name, entry in ENSEMBLE_METHODS.items() if entry is not ENTRY]
        raise ValueError(
            f"ensemble.num_members={ensemble.num_members} needs an ensemble method "
            f"({', '.join(ensembles)}); with method '{ensemble.method}' set num_members: 1"
        )


ENTRY = EnsembleMethod(
    "single model",
    "one model: dense, static sparse or DST, by the sparsity section",
    separate_runs=False,
    own_schedule=False,
    phased=False,
    epochs=_epochs,
    check_section=_check_section,
    check=check_ticket,
    plan=single_plan,
)
