"""Typed config for ensembles: which method, how many members, and the EDST phase plan.

The YAML section is `ensemble:`. `method: single` trains one model (dense, DST or static,
depending on the `sparsity` section); `edst` trains one run that yields M tickets
(SPEC §5); `dst_ensemble` trains M independent runs that differ in seed (SPEC §6).
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ft_dist.configbase import Section
from ft_dist.sparse.scores import GROWTH_SCORES
from ft_dist.train.methods import ENSEMBLE_METHODS, RENAMED_METHODS, ensemble_method
from ft_dist.utils import RenamedNote, known_name


class EDSTConfig(Section):
    """EDST schedule (SPEC §5): T = exploration_epochs + M * refinement_epochs epochs.

    Published CIFAR WRN-28-10 setting: exploration_epochs=150, refinement_epochs=100, M=3,
    refinement LR x0.1 then x0.01 for 50 + 50 epochs (the defaults: equal parts).
    ImageNet ResNet-50: 30, 70, M=4, refinement LR x0.1 / x0.01 / x0.001 for 30 / 30 / 10.
    """

    exploration_epochs: int = Field(ge=0, description="t_ex: DST epochs at the base LR")
    refinement_epochs: int = Field(ge=1, description="t_re: epochs per refinement phase")
    refinement_lr_scales: tuple[float, ...] = Field(
        (0.1, 0.01),
        min_length=1,
        description="LR factors of the consecutive parts of every refinement phase",
    )
    refinement_lr_epochs: tuple[int, ...] | None = Field(
        None,
        description="epochs of each part (one per scale, summing to refinement_epochs); "
        "None = equal parts, earlier parts taking the remainder (odd t_re: ceil, floor)",
    )
    explore_drop_fraction: float = Field(
        default=0.8, gt=0.0, le=1.0, description="q: drop fraction of the global exploration"
    )
    explore_growth: str = Field(
        "gradient",
        description="growth criterion of the global exploration (an entry of sparse/scores.py "
        "GROWTH_SCORES); the official code uses the run's growth mode (gradient in every "
        "published run: main_EDST.py, ImageNet/main.py)",
    )
    ticket: Literal["best", "last"] = "best"

    @field_validator("explore_growth")
    @classmethod
    def _known_growth(cls, name: str) -> str:
        return known_name(GROWTH_SCORES, name, "ensemble.edst.explore_growth")

    @field_validator("refinement_lr_scales")
    @classmethod
    def _check_scales(cls, scales: tuple[float, ...]) -> tuple[float, ...]:
        if any(not scale > 0.0 for scale in scales):
            raise ValueError(f"every LR factor must be > 0, e.g. [0.1, 0.01]; got {list(scales)}")
        return scales

    @model_validator(mode="after")
    def _check_lr_epochs(self) -> EDSTConfig:
        epochs = self.refinement_lr_epochs
        if epochs is None:
            return self
        if len(epochs) != len(self.refinement_lr_scales) or any(e < 1 for e in epochs):
            raise ValueError(
                f"ensemble.edst.refinement_lr_epochs={list(epochs)} needs one positive epoch "
                f"count per refinement_lr_scales entry ({list(self.refinement_lr_scales)})"
            )
        if sum(epochs) != self.refinement_epochs:
            raise ValueError(
                f"ensemble.edst.refinement_lr_epochs={list(epochs)} sums to {sum(epochs)}, "
                f"not refinement_epochs={self.refinement_epochs}: make them agree, or remove "
                "refinement_lr_epochs for equal parts"
            )
        return self


class DSTEnsembleConfig(Section):
    """How the M independent members of a DST Ensemble share the cluster (SPEC §6)."""

    max_concurrent_members: int | None = Field(
        default=None,
        ge=1,
        description="members trained at once; None = all M (they queue if the cluster is full)",
    )


class EnsembleConfig(Section):
    """The `ensemble:` section of a run config."""

    method: str = Field("single", description=f"an ensemble method: {', '.join(ENSEMBLE_METHODS)}")
    num_members: int = Field(default=1, ge=1, le=64)
    edst: EDSTConfig | None = None
    dst_ensemble: DSTEnsembleConfig = DSTEnsembleConfig()

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        """An old method name (``pdst``) and its section still load, with a note to rename."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in RENAMED_METHODS.items():
            if data.get("method") == old:
                _note_renamed(f"ensemble.method={old}", f"ensemble.method={new}")
                data["method"] = new
            if old in data:
                if new in data:
                    raise ValueError(f"ensemble.{old} is the old name of ensemble.{new}: keep one")
                _note_renamed(f"the ensemble.{old} section", f"ensemble.{new}")
                data[new] = data.pop(old)
        return data

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        return known_name(ENSEMBLE_METHODS, name, "ensemble.method")

    @model_validator(mode="after")
    def _check_method(self) -> EnsembleConfig:
        ensemble_method(self.method).check_section(self)
        return self


def _note_renamed(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is now called {new}; the old name still works for now: rename it in your config",
        RenamedNote,
        stacklevel=3,
    )
