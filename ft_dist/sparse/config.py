"""SparsityConfig: every knob of the DST engine, validated (SPEC §3–4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ft_dist.configbase import Section
from ft_dist.sparse.choices import COMPAT_MODES, SPARSE_INITS, resolve_compat
from ft_dist.sparse.scores import DROP_SCORES, GROWTH_SCORES, table_help
from ft_dist.utils import known_name


class SparsityConfig(Section):
    """How sparse, how masks start, and how and when they change.

    Exactly one of ``update_every_steps`` / ``update_every_samples`` sets ΔT for dynamic
    updates; ``update_every_samples`` keeps the number of updates per epoch fixed when the
    global batch changes (it needs the global batch size at attach time).

    The default ΔT is 1000 steps, the published CIFAR setting at global batch 128 (the
    official ImageNet runs use 4000 at batch 128); see docs/fidelity.md.
    """

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of masked weights kept")
    sparse_init: str = Field(
        "erk",
        description="per-layer densities (sparse/allocation.py), an entry of sparse/choices.py "
        "SPARSE_INITS: "
        + "; ".join(f"{name}: {init.summary}" for name, init in SPARSE_INITS.items()),
    )
    update: Literal["dynamic", "none"] = Field("dynamic", description="'none' = static mask")
    growth: str = Field(
        "gradient",
        description="growth criterion, an entry of sparse/scores.py GROWTH_SCORES: "
        + table_help(GROWTH_SCORES),
    )
    drop: str = Field(
        "magnitude",
        description="drop criterion, an entry of sparse/scores.py DROP_SCORES: "
        + table_help(DROP_SCORES),
    )
    update_every_steps: int | None = Field(
        1000, ge=1, description="ΔT in optimizer steps (paper: 1000 on CIFAR at batch 128)"
    )
    update_every_samples: int | None = Field(None, ge=1, description="ΔT in training samples")
    drop_fraction: float = Field(0.5, ge=0.0, le=1.0, description="f, or f0 for cosine")
    drop_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="cosine: from drop_fraction down to drop_fraction_min over the decay "
        "period: [0, stop_step] when stop_step is set (RigL), else the whole run, restarted "
        "after every EDST global exploration (official ImageNet code)",
    )
    drop_fraction_min: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="cosine floor: the drop fraction at the end of each decay period "
        "(official ImageNet CosineDecay eta_min = 0.005; RigL 0)",
    )
    stop_step: int | None = Field(None, ge=0, description="no regular update after this step")
    momentum_beta: float = Field(
        0.9, ge=0.0, lt=1.0, description="EMA factor for momentum / fisher growth"
    )
    inactive_momentum: Literal["zero", "keep"] = Field(
        "zero",
        description="optimizer state of inactive weights. zero (RigL, official ImageNet code): "
        "gradients are masked, so inactive and newly grown weights have no momentum. keep "
        "(official CIFAR code, sparselearning/core.py): the optimizer sees the dense "
        "gradient, momentum of inactive weights builds up and is never reset, and a grown "
        "weight starts at 0 but moves on its first step",
    )
    compat: str = Field(
        "none",
        description="reproduce the published FreeTickets code's update (sparse/official.py, "
        "docs/fidelity.md), an entry of sparse/choices.py COMPAT_MODES: "
        + "; ".join(f"{name}: {mode.summary}" for name, mode in COMPAT_MODES.items()),
    )
    dense_layers: tuple[str, ...] = Field(
        (), description="weights kept dense, by parameter name (with or without .weight)"
    )
    include: tuple[str, ...] = Field(
        (),
        description="glob patterns on parameter names (fnmatch) adding weights to the sparse "
        "set beyond the default rule (Conv/Linear weights and attention projection weights)",
    )
    exclude: tuple[str, ...] = Field(
        (), description="glob patterns on parameter names removing weights from the sparse set"
    )
    channel_sparsity: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="channel-level DST (Chase): fraction of the model's removable channels "
        "removed by channel_end_step, lowest unmasked mean magnitude first, budget "
        "reallocated to the channels that stay (sparse/channels.py); 0 = unstructured only",
    )
    channel_start_step: int = Field(
        0, ge=0, description="channel removal starts at the first update after this step"
    )
    channel_end_step: int | None = Field(
        None,
        ge=1,
        description="the removed fraction reaches channel_sparsity at the first update at or "
        "after this step (cubic schedule from channel_start_step); unset: the measured "
        "default of the run's method (train/methods/__init__.py default_channel_end_step: "
        "EDST at the end of its exploration, so every ticket has the same channels; a single "
        "run or DST Ensemble member after 0.6 of its steps)",
    )
    channel_allocation: Literal["global", "uniform"] = Field(
        "global",
        description="which channels go: global = the lowest unmasked mean magnitude over all "
        "groups, each group above channel_min_fraction (Chase); uniform = every group loses "
        "channel_sparsity of its channels, lowest first inside the group (cuts the FLOPs of "
        "every layer alike, e.g. when a classifier's cheap hidden units would go first)",
    )
    channel_group_sparsity: dict[str, float] = Field(
        default_factory=dict,
        description="channel_allocation=uniform: per-group fractions that replace "
        "channel_sparsity for the groups they name (a group is named by its root layer, e.g. "
        "features.0; glob patterns allowed; the first matching key wins), e.g. to cut a "
        "memory-bound first layer deeper; `ft-dist bench channels` lists a model's groups",
    )
    channel_min_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="each channel group keeps at least this share of its uniform share "
        "(1 - channel_sparsity) of channels (Chase's minimum ratio)",
    )
    channel_shrink: bool = Field(
        True,
        description="cut removed channels out of the model at every removal (every rank, the "
        "same step): the network trains physically smaller, with the masks, optimizer state "
        "and results of the masked run; false = keep them as zeros in the full-size model",
    )
    seed: int = 0
    check_consistency: bool = True

    @field_validator("sparse_init")
    @classmethod
    def _known_sparse_init(cls, name: str) -> str:
        return known_name(SPARSE_INITS, name, "sparsity.sparse_init")

    @field_validator("growth")
    @classmethod
    def _known_growth(cls, name: str) -> str:
        return known_name(GROWTH_SCORES, name, "sparsity.growth")

    @field_validator("drop")
    @classmethod
    def _known_drop(cls, name: str) -> str:
        return known_name(DROP_SCORES, name, "sparsity.drop")

    @field_validator("compat")
    @classmethod
    def _known_compat(cls, name: str) -> str:
        return known_name(COMPAT_MODES, name, "sparsity.compat")

    @model_validator(mode="before")
    @classmethod
    def _compat_fixes_momentum(cls, data):
        return resolve_compat(data)  # a compat mode sets (or checks) inactive_momentum

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
        if self.drop_schedule == "constant" and self.drop_fraction_min > 0.0:
            raise ValueError(
                "sparsity.drop_fraction_min is the floor of drop_schedule=cosine: set "
                "sparsity.drop_schedule=cosine, or remove drop_fraction_min"
            )
        if self.channel_sparsity > 0.0:
            self._check_channel_schedule()
        if self.drop_fraction_min > self.drop_fraction:
            raise ValueError(
                f"sparsity.drop_fraction_min={self.drop_fraction_min} must not exceed "
                f"sparsity.drop_fraction={self.drop_fraction} (cosine decays from f0 to the floor)"
            )
        return self

    def _check_channel_schedule(self) -> None:
        if not self.is_dynamic:
            raise ValueError(
                "sparsity.channel_sparsity removes channels at dynamic updates: set "
                "sparsity.update=dynamic with density < 1, or channel_sparsity=0"
            )
        if GROWTH_SCORES[self.growth].balanced:
            raise ValueError(
                f"sparsity.growth={self.growth} keeps every output unit's count, which channel "
                "removal changes: use its unbalanced twin, or sparsity.channel_sparsity=0"
            )
        end = self.channel_end_step  # None: the method's measured default (train/methods)
        if end is not None and end <= self.channel_start_step:
            raise ValueError(
                "sparsity.channel_sparsity needs sparsity.channel_end_step > "
                f"channel_start_step={self.channel_start_step} (the step by which the "
                "channels are removed)"
            )
        if self.channel_group_sparsity:
            if self.channel_allocation != "uniform":
                raise ValueError(
                    "sparsity.channel_group_sparsity sets per-group fractions of the uniform "
                    "allocation: set sparsity.channel_allocation=uniform, or remove it"
                )
            bad = {k: v for k, v in self.channel_group_sparsity.items() if not 0.0 <= v < 1.0}
            if bad:
                raise ValueError(
                    f"sparsity.channel_group_sparsity: fractions must be in [0, 1), got {bad}"
                )
        if self.stop_step is not None and end is not None and self.stop_step < end:
            raise ValueError(
                f"sparsity.stop_step={self.stop_step} ends the updates before "
                f"channel_end_step={self.channel_end_step}: channels are removed at updates"
            )

    @property
    def is_dynamic(self) -> bool:
        return self.update == "dynamic" and self.density < 1.0
