"""Ensemble methods: one table, `ENSEMBLE_METHODS`, the only list of them; one module each.

An entry (methods/base.py `EnsembleMethod`) says how many epochs its run trains and how
many models it yields (FLOPs pricing, `ft-dist flops`), which cross-section rules its config
must meet (validation), which run plan the loop follows, whether it is phased (explores and
refines from ``ensemble.edst``) and whether its members are separate runs (the CLI then
hands the config to `orchestrate/dst_ensemble.py`). Nothing else branches on a method name. A new
method is one module here plus its line in the table (docs/architecture.md). Torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ft_dist.train.methods import dst_ensemble, edst, single
from ft_dist.train.methods.base import EnsembleMethod, MethodEpochs, RunPlan
from ft_dist.utils import table_entry

if TYPE_CHECKING:
    from ft_dist.config import RunConfig

ENSEMBLE_METHODS: dict[str, EnsembleMethod] = {
    "single": single.ENTRY,
    "edst": edst.ENTRY,
    "dst_ensemble": dst_ensemble.ENTRY,
}
# Old names that configs may still use: old -> new (ensemble_config.py says so when loading).
RENAMED_METHODS: dict[str, str] = {"pdst": "dst_ensemble"}


def ensemble_method(name: str) -> EnsembleMethod:
    return table_entry(ENSEMBLE_METHODS, name, "ensemble.method")


def method_epochs(cfg: RunConfig) -> MethodEpochs:
    return ensemble_method(cfg.ensemble.method).epochs(cfg.ensemble, cfg.train.epochs)


# Where channel removal ends by default (sparsity.channel_end_step unset), as a fraction of
# the steps before the first ticket. EDST: its exploration phase; measured on the bundled
# demo (README "When channel removal ends": ending after a half or a quarter of the
# exploration cost 3.2-3.6 points of accuracy and doubled the NLL, ending with it kept the
# unstructured ensemble's quality). A single run or DST Ensemble member: the same share of
# its run as EDST's exploration has of one model's schedule (t_ex of t_ex + t_re: 150 of the
# paper's 250 CIFAR epochs, 3 of the demo's 5); not measured on its own.
CHANNEL_END_OF_EXPLORATION = 1.0
CHANNEL_END_OF_RUN = 0.6


def default_channel_end_step(cfg: RunConfig, steps_per_epoch: int) -> int:
    """The step removal ends at when sparsity.channel_end_step is unset."""
    method = ensemble_method(cfg.ensemble.method)
    if method.phased and cfg.ensemble.edst is not None:
        steps = cfg.ensemble.edst.exploration_epochs * steps_per_epoch
        fraction = CHANNEL_END_OF_EXPLORATION
    else:
        steps, fraction = cfg.num_epochs * steps_per_epoch, CHANNEL_END_OF_RUN
    return max(cfg.sparsity.channel_start_step + 1, round(fraction * steps))


def resolve_channel_schedule(cfg: RunConfig, steps_per_epoch: int) -> RunConfig:
    """``cfg`` with the default channel_end_step filled in (channel-level DST only)."""
    sparsity = cfg.sparsity
    if sparsity.channel_sparsity <= 0 or sparsity.channel_end_step is not None:
        return cfg
    end = default_channel_end_step(cfg, steps_per_epoch)
    return cfg.model_copy(
        update={"sparsity": sparsity.model_copy(update={"channel_end_step": end})}
    )


def build_plan(cfg: RunConfig, steps_per_epoch: int) -> RunPlan:
    """The plan of this run's method."""
    return ensemble_method(cfg.ensemble.method).plan(cfg, steps_per_epoch)
