"""EDST (SPEC §5): one DST run that explores, then refines M phases, each ending in a ticket,
with a global exploration between phases. The phase arithmetic is train/edst.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    example={"num_members": 2, "edst": {"exploration_epochs": 1, "refinement_epochs": 1}},
)
