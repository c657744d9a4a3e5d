"""Sparse deep ensembles: the EDST phase plan, DST Ensembles, evaluation and reports."""

from ft_dist.ensemble.config import EDSTConfig, EnsembleConfig, PDSTConfig
from ft_dist.ensemble.edst import EpochPlan, epoch_plan, phase_epochs, total_epochs

__all__ = [
    "EDSTConfig",
    "EnsembleConfig",
    "EpochPlan",
    "PDSTConfig",
    "epoch_plan",
    "phase_epochs",
    "total_epochs",
]
