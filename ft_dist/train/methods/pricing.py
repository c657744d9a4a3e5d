"""A run of an ensemble method priced in training FLOPs (SPEC §8): the epochs come from the
method's table entry, the arithmetic from `ft_dist.sparse.flops.price_run`."""

from __future__ import annotations

from ft_dist.sparse.flops import RunCost, price_run
from ft_dist.train.ensemble_config import EDSTConfig, EnsembleConfig
from ft_dist.train.methods import ENSEMBLE_METHODS, ensemble_method


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
    single = EnsembleConfig()
    sparse = {"growth": growth, "update_every_steps": update_every_steps}
    rows = {
        "dense": price_method("single", dense_fwd, dense_fwd, ensemble=single, epochs=epochs, dynamic=False),
        "static": price_method("single", dense_fwd, sparse_fwd, ensemble=single, epochs=epochs, dynamic=False),
        "dst": price_method("single", dense_fwd, sparse_fwd, ensemble=single, epochs=epochs, **sparse),
    }  # fmt: skip
    edst = EDSTConfig(exploration_epochs=exploration_epochs, refinement_epochs=refinement_epochs)
    for name in ENSEMBLE_METHODS:
        try:  # every method that yields num_members models
            ensemble = EnsembleConfig(method=name, num_members=num_members, edst=edst)
        except ValueError:
            continue
        rows[name] = price_method(
            name, dense_fwd, sparse_fwd, ensemble=ensemble, epochs=epochs,
            reference_epochs=epochs, **sparse,
        )  # fmt: skip
    return rows
