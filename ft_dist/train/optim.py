"""The optimizer, and the learning rate as a pure function of the optimizer step.

Being stateless, the LR needs nothing in the checkpoint beyond the step count: a resumed
run recomputes exactly the LR of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ft_dist.train.config import OptimConfig
from ft_dist.train.optimizers import optimizer_entry

# Public normalisation layer types (their weight and bias are "norm" parameters).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def build_optimizer(
    cfg: OptimConfig, module_or_params: nn.Module | Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` names (an entry of train/optimizers.py OPTIMIZERS).

    Weight decay applies to every parameter, as in the published CIFAR code (SPEC §4 keeps
    it from moving inactive weights), unless ``cfg.no_decay`` names parameters to exempt:
    then group 0 holds the decayed parameters and group 1 the exempt ones (weight decay 0).
    Finding norms and biases needs the module, so that form needs an ``nn.Module``.
    """
    return optimizer_entry(cfg.name).build(_param_groups(cfg, module_or_params), cfg)


def no_decay_parameter_names(module: nn.Module, no_decay: str) -> set[str]:
    """Names (as in ``module.named_parameters()``) of the parameters exempt from weight decay.

    ``norm``: every parameter of a normalisation layer. The official ImageNet code exempts
    parameters whose *name* contains "bn" (ImageNet/main.py:287-292), i.e. its BatchNorms
    except the two-layer shortcut's (``downsample.1``); we exempt every norm by type.
    ``norm_and_bias`` adds every bias.
    """
    if no_decay == "none":
        return set()
    names = set()
    for prefix, sub in module.named_modules():
        for name, _ in sub.named_parameters(prefix=prefix, recurse=False):
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(sub, NORM_LAYERS) or (no_decay == "norm_and_bias" and leaf == "bias"):
                names.add(name)
    return names


def _param_groups(
    cfg: OptimConfig, module_or_params: nn.Module | Iterable[torch.nn.Parameter]
) -> list[dict]:
    if not isinstance(module_or_params, nn.Module):
        if cfg.no_decay != "none":
            raise ValueError(
                f"optim.no_decay={cfg.no_decay} finds norms and biases in the model: pass the "
                "nn.Module to build_optimizer, not its parameters"
            )
        return [{"params": list(module_or_params)}]
    exempt = no_decay_parameter_names(module_or_params, cfg.no_decay)
    named = list(module_or_params.named_parameters())  # shared parameters appear once
    decay = [p for n, p in named if n not in exempt]
    groups = [{"params": decay}]
    if exempt:
        groups.append({"params": [p for n, p in named if n in exempt], "weight_decay": 0.0})
    return groups


def set_learning_rate_(optimizer, lr: float) -> None:
    """Set every param group's LR (works on torch and DeepSpeed optimizers alike)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def base_learning_rate(cfg: OptimConfig, global_batch_size: int | None = None) -> float:
    """``cfg.lr`` scaled linearly from ``cfg.base_batch_size`` to the run's global batch
    (per_worker batch × grad_accum_steps × workers); ``cfg.lr`` itself without a base."""
    if cfg.base_batch_size is None:
        return cfg.lr
    if not global_batch_size or global_batch_size < 1:
        raise ValueError(
            f"optim.base_batch_size={cfg.base_batch_size} scales the LR with the global batch: "
            "pass global_batch_size= (batch_size_per_worker x grad_accum_steps x workers)"
        )
    return cfg.lr * global_batch_size / cfg.base_batch_size


def learning_rate(
    cfg: OptimConfig,
    step: int,
    steps_per_epoch: int,
    total_epochs: int,
    phase_scale: float | None = None,
    *,
    global_batch_size: int | None = None,
) -> float:
    """LR for 0-based optimizer ``step`` of a run of ``total_epochs`` epochs.

    ``phase_scale`` (EDST) replaces the step/cosine schedule with the phase plan's factor.
    ``global_batch_size`` is required when ``cfg.base_batch_size`` is set (linear scaling).
    Warm-up, ``per_step``: ``factor = (step + 1) / warmup_steps``, so the first step never
    uses LR 0 and the base LR is reached at the end of ``warmup_epochs``; ``per_epoch``:
    epoch e < W uses ``(e + 1) / (W + 1)`` for all its steps (ImageNet/main.py:363-364).
    """
    if steps_per_epoch < 1 or total_epochs < 1:
        raise ValueError(
            f"learning_rate needs steps_per_epoch >= 1 and total_epochs >= 1, "
            f"got {steps_per_epoch} and {total_epochs}"
        )
    base = base_learning_rate(cfg, global_batch_size)
    warmup = _warmup_factor(cfg, step, steps_per_epoch)
    if phase_scale is not None:
        return base * warmup * phase_scale
    return base * warmup * _schedule_factor(cfg, step, steps_per_epoch, total_epochs)


def milestone_epochs(cfg: OptimConfig, total_epochs: int) -> tuple[int, ...]:
    """0-based epochs that start decayed under the step schedule.

    Fractions round down, as ``int(epochs * 3/4)`` in main_DST.py (250 epochs: 125, 187);
    the tiny epsilon keeps 0.3 x 100 = 30.000000000000004 → 30 from binary rounding.
    """
    if cfg.milestone_epochs is not None:
        epochs = cfg.milestone_epochs
        if epochs and epochs[-1] >= total_epochs:
            raise ValueError(
                f"optim.milestone_epochs={list(epochs)} must be below the run's {total_epochs} "
                "epochs: shorten them, or use optim.milestones fractions"
            )
        return epochs
    return tuple(math.floor(m * total_epochs + 1e-9) for m in cfg.milestones)


def _warmup_factor(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    if cfg.warmup_style == "per_epoch":
        warmup_epochs = int(cfg.warmup_epochs)
        epoch = step // steps_per_epoch
        return (epoch + 1) / (warmup_epochs + 1) if epoch < warmup_epochs else 1.0
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _schedule_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        passed = sum(epoch >= m for m in milestone_epochs(cfg, total_epochs))
        return cfg.gamma**passed
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    total_steps = total_epochs * steps_per_epoch
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0, step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
