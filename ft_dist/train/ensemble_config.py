"""Typed config for ensembles: which method, how many members, and the EDST phase plan.

The YAML section is `ensemble:`. `method: single` trains one model (dense, DST or static,
depending on the `sparsity` section); `edst` trains one run that yields M tickets
(SPEC §5); `pdst` trains M independent runs that differ in seed (SPEC §6).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ft_dist.configbase import Section


class EDSTConfig(Section):
    """EDST schedule (SPEC §5): T = exploration_epochs + M * refinement_epochs epochs.

    Published CIFAR WRN-28-10 setting: exploration_epochs=150, refinement_epochs=100, M=3.
    """

    exploration_epochs: int = Field(ge=0, description="t_ex: DST epochs at the base LR")
    refinement_epochs: int = Field(ge=1, description="t_re: epochs per refinement phase")
    explore_drop_fraction: float = Field(
        default=0.8, gt=0.0, le=1.0, description="q: drop fraction of the global exploration"
    )
    explore_growth: Literal["random", "gradient", "momentum"] = "random"
    ticket: Literal["best", "last"] = "best"


class PDSTConfig(Section):
    """How the M independent members of a DST Ensemble share the cluster (SPEC §6)."""

    max_concurrent_members: int | None = Field(
        default=None,
        ge=1,
        description="members trained at once; None = all M (they queue if the cluster is full)",
    )


class EnsembleConfig(Section):
    """The `ensemble:` section of a run config."""

    method: Literal["single", "edst", "pdst"] = "single"
    num_members: int = Field(default=1, ge=1, le=64)
    edst: EDSTConfig | None = None
    pdst: PDSTConfig = PDSTConfig()

    @model_validator(mode="after")
    def _check_method(self) -> EnsembleConfig:
        if self.method == "single" and self.num_members != 1:
            raise ValueError(
                f"ensemble.num_members={self.num_members} needs ensemble.method 'edst' or "
                "'pdst'; with method 'single' set num_members: 1"
            )
        if self.method == "edst" and self.edst is None:
            raise ValueError(
                "ensemble.method 'edst' needs an ensemble.edst section with "
                "exploration_epochs and refinement_epochs (e.g. 150 and 100)"
            )
        return self
