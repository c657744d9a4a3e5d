"""DST Ensemble (SPEC §6): M independent DST runs with their own seeds, trained concurrently
by orchestrate/dst_ensemble.py; each member is a single run with its own member index."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ft_dist.train.methods.base import EnsembleMethod, MethodEpochs, check_ticket
from ft_dist.train.methods.single import single_plan

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.train.ensemble_config import EnsembleConfig


def _epochs(ensemble: EnsembleConfig, epochs: int) -> MethodEpochs:
    members = ensemble.num_members
    text = f"{members} x {epochs} epochs"
    return MethodEpochs(epochs, epochs * members, members, epochs, text)


def _check(cfg: RunConfig) -> None:
    if cfg.train.member > cfg.ensemble.num_members:
        raise ValueError(
            f"train.member={cfg.train.member} is outside 1..ensemble.num_members="
            f"{cfg.ensemble.num_members}"
        )
    check_ticket(cfg)


ENTRY = EnsembleMethod(
    "DST Ensemble",
    "M independent DST runs with their own seeds, trained concurrently (SPEC §6)",
    separate_runs=True,
    own_schedule=False,
    phased=False,
    epochs=_epochs,
    check_section=lambda ensemble: None,
    check=_check,
    plan=single_plan,
    example={"num_members": 2},
)
