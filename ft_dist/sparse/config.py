"""SparsityConfig: every knob of the DST engine, validated (SPEC §3–4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ft_dist.configbase import Section


class SparsityConfig(Section):
    """How sparse, how masks start, and how and when they change.

    Exactly one of ``update_every_steps`` / ``update_every_samples`` sets ΔT for dynamic
    updates; ``update_every_samples`` keeps the number of updates per epoch fixed when the
    global batch changes (it needs the global batch size at attach time).
    """

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of masked weights kept")
    sparse_init: Literal["erk", "er", "uniform"] = "erk"
    update: Literal["dynamic", "none"] = Field("dynamic", description="'none' = static mask")
    growth: Literal["gradient", "random", "momentum"] = "gradient"
    update_every_steps: int | None = Field(100, ge=1, description="ΔT in optimizer steps")
    update_every_samples: int | None = Field(None, ge=1, description="ΔT in training samples")
    drop_fraction: float = Field(0.5, ge=0.0, le=1.0, description="f, or f0 for cosine")
    drop_schedule: Literal["constant", "cosine"] = "constant"
    stop_step: int | None = Field(None, ge=0, description="no regular update after this step")
    momentum_beta: float = Field(
        0.9, ge=0.0, lt=1.0, description="EMA of gradients for momentum growth"
    )
    dense_layers: tuple[str, ...] = ()
    seed: int = 0
    check_consistency: bool = True

    @model_validator(mode="before")
    @classmethod
    def _samples_replace_default_steps(cls, data):
        # Setting update_every_samples alone replaces the default ΔT in steps.
        if isinstance(data, dict) and data.get("update_every_samples") is not None:
            if data.get("update_every_steps") is not None:
                raise ValueError(
                    "sparsity: set only one of update_every_steps and update_every_samples"
                )
            data = {**data, "update_every_steps": None}
        return data

    @model_validator(mode="after")
    def _check_schedule(self) -> SparsityConfig:
        if self.drop_schedule == "cosine" and self.stop_step is None:
            raise ValueError(
                "sparsity.drop_schedule=cosine decays to 0 at sparsity.stop_step: set stop_step "
                "(RigL uses 75% of the training steps)"
            )
        return self

    @property
    def is_dynamic(self) -> bool:
        return self.update == "dynamic" and self.density < 1.0
