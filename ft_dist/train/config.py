"""Typed config sections for training: `optim:`, `train:` and `ray:`.

Validation is cheap (no torch import) so that `ft-dist train --help`, config loading and
overrides fail fast on a typo before any worker starts.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ft_dist.configbase import Section
from ft_dist.train.optimizers import OPTIMIZERS, optimizer_entry
from ft_dist.train.strategies import STRATEGIES, strategy_entry
from ft_dist.utils import known_name

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OptimConfig(Section):
    """Optimizer and learning-rate schedule.

    The LR at a step is ``lr × batch scaling × warmup × schedule``. With ``base_batch_size``
    set, ``lr`` is the LR at that global batch and scales linearly with the real one
    (official ImageNet: 0.1 at 2 × 64 = 128, so 0.8 at 1024). The warm-up is linear over
    ``warmup_epochs`` (per step, or per epoch as the official ImageNet code), then ``step``
    (× ``gamma`` at each milestone), ``cosine`` (to 0 at the last step) or ``constant``.
    Milestones are fractions of the training epochs, rounded down to an epoch as the
    official ``MultiStepLR(milestones=[int(T/2), int(T*3/4)])`` (main_DST.py), so one config
    serves any run length; ``milestone_epochs`` gives them as epochs instead. An EDST run
    ignores ``schedule``: its phase plan sets the LR factor per epoch (SPEC §5); the
    warm-up still applies.
    """

    name: str = Field("sgd", description="an entry of train/optimizers.py OPTIMIZERS")
    lr: float = Field(
        0.1, gt=0.0, description="base learning rate (at base_batch_size, when that is set)"
    )
    base_batch_size: int | None = Field(
        None,
        ge=1,
        description="global batch at which lr is given; the LR scales linearly with the real "
        "global batch (lr x global / base). None = lr is used as is",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay: Literal["none", "norm", "norm_and_bias"] = Field(
        "none",
        description="parameters without weight decay: none (official CIFAR code), norm = "
        "normalisation-layer weights and biases (official ImageNet code excludes BatchNorm), "
        "norm_and_bias = also every bias",
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_style: Literal["per_step", "per_epoch"] = Field(
        "per_step",
        description="per_step: factor (step + 1) / warm-up steps; per_epoch: epoch e < W "
        "trains at (e + 1) / (W + 1) of the LR (official ImageNet/main.py)",
    )
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="step schedule: fractions of the training epochs, increasing"
    )
    milestone_epochs: tuple[int, ...] | None = Field(
        None,
        description="step schedule: 0-based epochs that start decayed, increasing (e.g. "
        "[125, 187]); replaces milestones",
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: LR factor per milestone")

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        return known_name(OPTIMIZERS, name, "optim.name")

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

    @field_validator("milestone_epochs")
    @classmethod
    def _check_milestone_epochs(cls, epochs: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if epochs is not None and (
            any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs))
        ):
            raise ValueError(
                f"milestone_epochs must be strictly increasing epochs >= 1, e.g. [125, 187]; "
                f"got {list(epochs)}"
            )
        return epochs

    @model_validator(mode="after")
    def _check_combinations(self) -> OptimConfig:
        if optimizer_entry(self.name).needs_momentum and self.momentum == 0.0:
            raise ValueError(f"optim.name={self.name} needs optim.momentum > 0 (e.g. 0.9)")
        if self.milestone_epochs is not None and "milestones" in self.model_fields_set:
            raise ValueError(
                "set only one of optim.milestones (fractions) and optim.milestone_epochs (epochs)"
            )
        if self.warmup_style == "per_epoch" and self.warmup_epochs != int(self.warmup_epochs):
            raise ValueError(
                f"optim.warmup_style=per_epoch needs whole optim.warmup_epochs, got "
                f"{self.warmup_epochs} (or use warmup_style=per_step)"
            )
        return self


class TrainConfig(Section):
    """How one member trains: length, distribution strategy, precision, checkpoints, naming.

    ``num_workers`` is the number of data-parallel workers (Ray Train workers, or processes
    under torchrun); the per-worker batch size lives in the `data:` section.
    """

    epochs: int = Field(10, ge=1, description="training epochs (EDST: derived from ensemble.edst)")
    strategy: str = Field(
        "ddp", description="data-parallel strategy, an entry of train/strategies STRATEGIES"
    )
    zero_stage: Literal[0, 1, 2] = Field(0, description="DeepSpeed ZeRO stage")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = Field(False, description="bf16 autocast (DeepSpeed: bf16 weights); GPU only")
    channels_last: bool = Field(False, description="channels_last memory format; GPU only")
    num_workers: int = Field(
        1, ge=1, description="data-parallel workers; [min, max] = elastic (max here, min below)"
    )
    min_workers: int | None = Field(
        None,
        ge=1,
        description="elastic training: the run goes on with as few as this many workers (a "
        "lost node) and scales back to num_workers; None = a fixed num_workers",
    )
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="examples per optimizer step, the same at every world size: "
        "the accumulation becomes global / (batch_size_per_worker x workers), replacing "
        "grad_accum_steps. None = batch_size_per_worker x grad_accum_steps x num_workers "
        "when elastic (grad_accum_steps is then the accumulation at num_workers)",
    )
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
    ticket: Literal["best", "last"] = Field(
        "best",
        description="ticket of a single run or DST Ensemble member: the best-validation epoch "
        "(official main_DST.py) or the last epoch; EDST uses ensemble.edst.ticket",
    )

    @field_validator("run_name")
    @classmethod
    def _check_run_name(cls, name: str) -> str:
        if not _RUN_NAME.match(name):
            raise ValueError(
                f"run_name {name!r} must be a directory name: letters, digits, '.', '_', '-'"
            )
        return name

    @model_validator(mode="before")
    @classmethod
    def _split_worker_range(cls, data: object) -> object:
        """``num_workers: [min, max]`` is stored as min_workers / num_workers, so code that
        reads num_workers as the (largest) worker count keeps working."""
        if isinstance(data, dict) and isinstance(data.get("num_workers"), list | tuple):
            bounds = data["num_workers"]
            if len(bounds) != 2:
                raise ValueError(f"train.num_workers must be an int or [min, max], got {bounds}")
            data = {**data, "min_workers": bounds[0], "num_workers": bounds[1]}
        return data

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.num_workers

    @model_validator(mode="after")
    def _check_workers(self) -> TrainConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"train.min_workers={self.min_workers} exceeds train.num_workers="
                f"{self.num_workers}; give the range as num_workers: [min, max]"
            )
        entry = strategy_entry(self.strategy)
        if self.elastic and not entry.resumes_at_any_world_size(self):
            raise ValueError(f"elastic train.num_workers: {entry.world_size_rule}")
        return self

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        return known_name(STRATEGIES, name, "train.strategy")

    @model_validator(mode="after")
    def _check_zero_stage(self) -> TrainConfig:
        zero_set = "zero_stage" in self.model_fields_set and self.zero_stage
        if zero_set and not strategy_entry(self.strategy).zero_stages:
            with_zero = [name for name, entry in STRATEGIES.items() if entry.zero_stages]
            raise ValueError(
                f"train.zero_stage needs train.strategy={' or '.join(with_zero)} (or set it to 0)"
            )
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
    resize_interval_s: float = Field(
        60.0,
        ge=0.0,
        description="elastic train.num_workers: how often Ray looks for room to grow the "
        "worker group back (each resize restarts it from the newest checkpoint)",
    )


def worker_resources(ray_cfg: RayConfig) -> dict[str, float]:
    """What one Ray Train worker reserves (the ScalingConfig of worker.build_trainer)."""
    resources = {"CPU": ray_cfg.cpus_per_worker}
    if ray_cfg.use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker
    return resources


def format_resources(resources: dict[str, float]) -> str:
    """{"CPU": 2.0, "GPU": 1.0} -> "2 CPU, 1 GPU"."""
    return ", ".join(f"{value:g} {name}" for name, value in resources.items())
