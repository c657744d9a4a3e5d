"""Ensemble methods: one table, `ENSEMBLE_METHODS`, the only list of them.

An entry says how many epochs its run trains and how many models it yields (FLOPs pricing,
`ft-dist flops`), which cross-section rules its config must meet (validation), which run
plan the loop follows (`train/plan.py`), and whether its members are separate runs (the CLI
then hands the config to `orchestrate/pdst.py`). Nothing else branches on a method name.
A new method is one entry here plus its plan class (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ft_dist.utils import table_entry

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.sparse.flops import RunCost
    from ft_dist.train.ensemble_config import EnsembleConfig
    from ft_dist.train.plan import RunPlan


@dataclass(frozen=True)
class MethodEpochs:
    """Epochs of a run of one method (SPEC §5, §6)."""

    per_run: int  # epochs one run trains (EDST: t_ex + M t_re; a DST Ensemble member: E)
    total: int  # epochs trained by all its runs together
    members: int  # models the ensemble averages at inference
    reference: int  # epochs of the one dense run it is priced against
    text: str  # how the epochs come about, for `ft-dist flops`


@dataclass(frozen=True)
class EnsembleMethod:
    label: str
    summary: str
    separate_runs: bool  # members are independent runs (orchestrate/pdst.py trains them)
    own_schedule: bool  # the method derives train.epochs from its own section
    epochs: Callable[[EnsembleConfig, int], MethodEpochs]
    check_section: Callable[[EnsembleConfig], None]  # rules within the ensemble: section
    check: Callable[[RunConfig], None]  # rules across sections
    plan: Callable[[RunConfig, int], RunPlan]


# --------------------------------------------------------------------------- single
def _single_epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    return MethodEpochs(epochs, epochs, 1, epochs, f"{epochs} epochs")


def _check_single_section(ensemble: EnsembleConfig) -> None:
    if ensemble.num_members != 1:
        raise ValueError(
            f"ensemble.num_members={ensemble.num_members} needs an ensemble method "
            f"({', '.join(n for n in ENSEMBLE_METHODS if n != 'single')}); "
            "with method 'single' set num_members: 1"
        )


def _check_ticket(cfg: RunConfig) -> None:
    if cfg.train.ticket == "best" and not cfg.data.val_split:
        raise ValueError(
            "train.ticket=best keeps the epoch with the best validation accuracy: set "
            "data.val_split, or use train.ticket=last"
        )


def _single_plan(cfg: RunConfig, steps_per_epoch: int) -> RunPlan:
    from ft_dist.train.plan import SinglePlan, cosine_without_stop

    return SinglePlan(
        num_epochs=cfg.num_epochs,
        member=cfg.train.member,
        ticket_choice=cfg.train.ticket,
        steps_per_epoch=steps_per_epoch,
        cosine_over_run=cosine_without_stop(cfg),
    )


# --------------------------------------------------------------------------- EDST
def _edst_epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    from ft_dist.train.edst import total_epochs

    edst, members = _edst_section(ensemble), ensemble.num_members
    total = total_epochs(members, edst)
    text = (
        f"t_ex={edst.exploration_epochs} + {members} x t_re={edst.refinement_epochs} "
        f"= {total} epochs in one run"
    )
    reference = edst.exploration_epochs + edst.refinement_epochs
    return MethodEpochs(total, total, members, reference, text)


def _edst_section(ensemble: EnsembleConfig):
    if ensemble.edst is None:
        raise ValueError(
            "ensemble.method 'edst' needs an ensemble.edst section with "
            "exploration_epochs and refinement_epochs (e.g. 150 and 100)"
        )
    return ensemble.edst


def _check_edst(cfg: RunConfig) -> None:
    from ft_dist.sparse.scores import growth_criterion
    from ft_dist.train.edst import total_epochs

    edst = _edst_section(cfg.ensemble)
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


def _edst_plan(cfg: RunConfig, steps_per_epoch: int) -> RunPlan:
    from ft_dist.train.plan import EDSTPlan

    return EDSTPlan(cfg, steps_per_epoch)


# --------------------------------------------------------------------------- DST Ensemble
def _pdst_epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    members = ensemble.num_members
    text = f"{members} x {epochs} epochs"
    return MethodEpochs(epochs, epochs * members, members, epochs, text)


def _check_pdst(cfg: RunConfig) -> None:
    if cfg.train.member > cfg.ensemble.num_members:
        raise ValueError(
            f"train.member={cfg.train.member} is outside 1..ensemble.num_members="
            f"{cfg.ensemble.num_members}"
        )
    _check_ticket(cfg)


ENSEMBLE_METHODS: dict[str, EnsembleMethod] = {
    "single": EnsembleMethod(
        "single model",
        "one model: dense, static sparse or DST, by the sparsity section",
        separate_runs=False,
        own_schedule=False,
        epochs=_single_epochs,
        check_section=_check_single_section,
        check=_check_ticket,
        plan=_single_plan,
    ),
    "edst": EnsembleMethod(
        "EDST",
        "one DST run that explores, then refines M times: M tickets (SPEC §5)",
        separate_runs=False,
        own_schedule=True,
        epochs=_edst_epochs,
        check_section=_edst_section,
        check=_check_edst,
        plan=_edst_plan,
    ),
    "pdst": EnsembleMethod(
        "DST Ensemble",
        "M independent DST runs with their own seeds, trained concurrently (SPEC §6)",
        separate_runs=True,
        own_schedule=False,
        epochs=_pdst_epochs,
        check_section=lambda ensemble: None,
        check=_check_pdst,
        plan=_single_plan,  # each member is a single run with its own member index
    ),
}


def ensemble_method(name: str) -> EnsembleMethod:
    return table_entry(ENSEMBLE_METHODS, name, "ensemble.method")


def method_epochs(cfg: RunConfig) -> MethodEpochs:
    return ensemble_method(cfg.ensemble.method).epochs(cfg.ensemble, cfg.train.epochs)


# --------------------------------------------------------------------------- pricing
def price_method(
    name: str,
    dense_fwd: float,
    sparse_fwd: float,
    *,
    ensemble: EnsembleConfig,
    epochs: int,
    dynamic: bool = True,
    growth: str = "gradient",
    update_every_steps: float | None = None,
    reference_epochs: int | None = None,
) -> RunCost:
    """SPEC §8 cost of a run of method ``name`` (its epochs from the table entry)."""
    from ft_dist.sparse.flops import price_run

    run = ensemble_method(name).epochs(ensemble, epochs)
    return price_run(
        dense_fwd,
        sparse_fwd,
        method=name,
        epochs_per_run=run.per_run,
        total_epochs=run.total,
        members=run.members,
        reference_epochs=reference_epochs or run.reference,
        dynamic=dynamic,
        growth=growth,
        update_every_steps=update_every_steps,
    )


def price_paper_runs(
    dense_fwd: float,
    sparse_fwd: float,
    *,
    epochs: int = 250,
    num_members: int = 3,
    exploration_epochs: int = 150,
    refinement_epochs: int = 100,
    growth: str = "gradient",
    update_every_steps: float = 1000,
) -> dict[str, RunCost]:
    """The paper's comparison: dense, static, DST and every ensemble method of the table, each
    relative to one dense run of ``epochs`` epochs. Defaults: the published CIFAR WRN-28-10
    setting (SPEC §5, §6)."""
    from ft_dist.train.ensemble_config import EDSTConfig, EnsembleConfig

    single = EnsembleConfig()
    sparse = {"growth": growth, "update_every_steps": update_every_steps}
    rows = {
        "dense": price_method("single", dense_fwd, dense_fwd, ensemble=single, epochs=epochs, dynamic=False),
        "static": price_method("single", dense_fwd, sparse_fwd, ensemble=single, epochs=epochs, dynamic=False),
        "dst": price_method("single", dense_fwd, sparse_fwd, ensemble=single, epochs=epochs, **sparse),
    }  # fmt: skip
    edst = EDSTConfig(exploration_epochs=exploration_epochs, refinement_epochs=refinement_epochs)
    for name in ENSEMBLE_METHODS:
        if name == "single":
            continue
        ensemble = EnsembleConfig(method=name, num_members=num_members, edst=edst)
        rows[name] = price_method(
            name, dense_fwd, sparse_fwd, ensemble=ensemble, epochs=epochs,
            reference_epochs=epochs, **sparse,
        )  # fmt: skip
    return rows
