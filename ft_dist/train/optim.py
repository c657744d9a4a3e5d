"""The optimizer, and the learning rate as a pure function of the optimizer step.

Being stateless, the LR needs nothing in the checkpoint beyond the step count: a resumed
run recomputes exactly the LR of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ft_dist.train.config import OptimConfig


def build_optimizer(
    cfg: OptimConfig, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or AdamW over all parameters, as in the published CIFAR code
    (weight decay on every parameter; SPEC §4 keeps it from moving inactive weights)."""
    params = list(params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.name == "sgd-nesterov",
    )


def set_learning_rate_(optimizer, lr: float) -> None:
    """Set every param group's LR (works on torch and DeepSpeed optimizers alike)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def learning_rate(
    cfg: OptimConfig,
    step: int,
    steps_per_epoch: int,
    total_epochs: int,
    phase_scale: float | None = None,
) -> float:
    """LR for 0-based optimizer ``step`` of a run of ``total_epochs`` epochs.

    ``phase_scale`` (EDST) replaces the step/cosine schedule with the phase plan's factor.
    Warm-up is linear, reaching the base LR at the end of ``warmup_epochs``:
    ``factor = (step + 1) / warmup_steps``, so the first step never uses LR 0.
    """
    if steps_per_epoch < 1 or total_epochs < 1:
        raise ValueError(
            f"learning_rate needs steps_per_epoch >= 1 and total_epochs >= 1, "
            f"got {steps_per_epoch} and {total_epochs}"
        )
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if phase_scale is not None:
        return cfg.lr * warmup * phase_scale
    return (
        cfg.lr * warmup * _schedule_factor(cfg, step, steps_per_epoch, total_epochs, warmup_steps)
    )


def _schedule_factor(
    cfg: OptimConfig, step: int, steps_per_epoch: int, total_epochs: int, warmup_steps: int
) -> float:
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        # Milestones fall on epoch boundaries: the epoch index round(m · T) starts decayed.
        epoch = step // steps_per_epoch
        passed = sum(epoch >= round(m * total_epochs) for m in cfg.milestones)
        return cfg.gamma**passed
    total_steps = total_epochs * steps_per_epoch
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0, step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
