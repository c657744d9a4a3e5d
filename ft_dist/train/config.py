"""Typed config sections for training: `optim:`, `train:` and `ray:`.

Validation is cheap (no torch import) so that `ft-dist train --help`, config loading and
overrides fail fast on a typo before any worker starts.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ft_dist.configbase import Section

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OptimConfig(Section):
    """Optimizer and learning-rate schedule.

    The LR at a step is ``lr × warmup × schedule``: a linear warm-up over ``warmup_epochs``,
    then ``step`` (× ``gamma`` at each milestone), ``cosine`` (to 0 at the last step) or
    ``constant``. Milestones are fractions of the training epochs, so one config serves any
    run length (SPEC §6: ×0.1 at 50% and 75%). An EDST run ignores ``schedule``: its phase
    plan sets the LR factor per epoch (SPEC §5); the warm-up still applies.
    """

    name: Literal["sgd", "sgd-nesterov", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0, description="base learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_epochs: float = Field(0.0, ge=0.0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="step schedule: fractions of the training epochs, increasing"
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: LR factor per milestone")

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each AdamW beta must be in [0, 1), got {list(betas)}")
        return betas

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, milestones: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < m < 1.0 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(
                f"milestones must be increasing fractions of the training epochs in (0, 1), "
                f"e.g. [0.5, 0.75]; got {list(milestones)}"
            )
        return milestones

    @model_validator(mode="after")
    def _check_nesterov(self) -> OptimConfig:
        if self.name == "sgd-nesterov" and self.momentum == 0.0:
            raise ValueError("optim.name=sgd-nesterov needs optim.momentum > 0 (e.g. 0.9)")
        return self


class TrainConfig(Section):
    """How one member trains: length, distribution strategy, precision, checkpoints, naming.

    ``num_workers`` is the number of data-parallel workers (Ray Train workers, or processes
    under torchrun); the per-worker batch size lives in the `data:` section.
    """

    epochs: int = Field(10, ge=1, description="training epochs (EDST: derived from ensemble.edst)")
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[0, 1, 2] = Field(0, description="DeepSpeed ZeRO stage")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = Field(False, description="bf16 autocast (DeepSpeed: bf16 weights); GPU only")
    channels_last: bool = Field(False, description="channels_last memory format; GPU only")
    num_workers: int = Field(1, ge=1, description="data-parallel workers")
    eval_every_epochs: int = Field(1, ge=1, description="validate every N epochs (and at the end)")
    checkpoint_every_epochs: int = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps inside an epoch"
    )
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    log_every_steps: int = Field(20, ge=1)
    run_name: str = "run"
    output_dir: str = "runs"
    seed: int = Field(0, ge=0)
    member: int = Field(1, ge=1, description="member index (DST Ensemble); changes every seed")

    @field_validator("run_name")
    @classmethod
    def _check_run_name(cls, name: str) -> str:
        if not _RUN_NAME.match(name):
            raise ValueError(
                f"run_name {name!r} must be a directory name: letters, digits, '.', '_', '-'"
            )
        return name

    @model_validator(mode="after")
    def _check_precision(self) -> TrainConfig:
        if self.strategy == "ddp" and "zero_stage" in self.model_fields_set and self.zero_stage:
            raise ValueError("train.zero_stage needs train.strategy=deepspeed (or set it to 0)")
        return self


class RayConfig(Section):
    """Where and how the Ray Train worker group runs (read by `ft-dist train`, not the loop)."""

    address: str | None = Field(
        None, description="Ray cluster address; None = RAY_ADDRESS or local"
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)
    max_failures: int = Field(3, ge=-1, description="restarts after a worker dies (-1 = forever)")
    storage_path: str | None = Field(
        None, description="checkpoint storage; None = train.output_dir"
    )
