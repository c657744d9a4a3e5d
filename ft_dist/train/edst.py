"""The EDST phase plan (SPEC §5) as pure functions of the epoch and the step.

One EDST run of T = t_ex + M * t_re epochs yields M tickets:

    epochs [0, t_ex)                         phase 0: exploration at the base LR
    epochs [t_ex + (m-1) t_re, t_ex + m t_re)  phase m = 1..M: refinement

Inside a refinement phase the LR steps through ``refinement_lr_scales`` for
``refinement_lr_epochs`` epochs each: by default x0.1 then x0.01 in two halves (the first
half takes the extra epoch of an odd t_re), as main_EDST.py does on CIFAR; ImageNet uses
x0.1 / x0.01 / x0.001 for 30 / 30 / 10 epochs (ImageNet/main.py). After the last epoch of
phase m the phase's ticket is finalised and, if m < M, one global exploration (a DST
update with drop fraction q) moves the network to a new basin before phase m+1 starts
again at its first LR factor.

A cosine drop fraction restarts after every global exploration, as the official ImageNet
code re-creates its CosineDecay there: the decay periods are [0, first exploration), then
one refinement phase each (`drop_decay_period`).

Being pure functions of (epoch or step, M, cfg) the plan needs no state of its own: a run
resumed at any epoch recomputes exactly where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ft_dist.train.ensemble_config import EDSTConfig

EXPLORATION_LR_SCALE = 1.0


@dataclass(frozen=True)
class EpochPlan:
    """What the training loop does in one epoch of an EDST run."""

    epoch: int
    phase: int  # 0 = exploration, 1..M = refinement phase (the member being trained)
    lr_scale: float  # multiplies the base learning rate for the whole epoch
    phase_end: bool  # last epoch of a refinement phase: finalise that phase's ticket after it
    explore_after: bool  # phase_end and phase < M: one global exploration after this epoch


@dataclass(frozen=True)
class DecayPeriod:
    """One period of the cosine drop fraction, in optimizer steps: [start, start + length]."""

    start: int
    length: int


def total_epochs(num_members: int, cfg: EDSTConfig) -> int:
    """T = t_ex + M * t_re."""
    _check_members(num_members)
    return cfg.exploration_epochs + num_members * cfg.refinement_epochs


def refinement_lr_parts(cfg: EDSTConfig) -> tuple[tuple[float, int], ...]:
    """(LR factor, epochs) of each consecutive part of a refinement phase."""
    epochs = cfg.refinement_lr_epochs
    if epochs is None:
        base, extra = divmod(cfg.refinement_epochs, len(cfg.refinement_lr_scales))
        epochs = tuple(base + (i < extra) for i in range(len(cfg.refinement_lr_scales)))
    return tuple(zip(cfg.refinement_lr_scales, epochs, strict=True))


def epoch_plan(epoch: int, num_members: int, cfg: EDSTConfig) -> EpochPlan:
    """The plan for 0-based `epoch` of an EDST run with `num_members` tickets."""
    total = total_epochs(num_members, cfg)
    if not 0 <= epoch < total:
        raise ValueError(
            f"EDST epoch {epoch} is outside the run: exploration_epochs="
            f"{cfg.exploration_epochs} + num_members={num_members} x refinement_epochs="
            f"{cfg.refinement_epochs} gives epochs 0..{total - 1}"
        )
    if epoch < cfg.exploration_epochs:
        return EpochPlan(epoch, 0, EXPLORATION_LR_SCALE, phase_end=False, explore_after=False)
    offset = epoch - cfg.exploration_epochs
    phase = offset // cfg.refinement_epochs + 1
    local = offset % cfg.refinement_epochs
    phase_end = local == cfg.refinement_epochs - 1
    return EpochPlan(
        epoch,
        phase,
        _refinement_scale(local, cfg),
        phase_end=phase_end,
        explore_after=phase_end and phase < num_members,
    )


def drop_decay_period(
    step: int, steps_per_epoch: int, num_members: int, cfg: EDSTConfig
) -> DecayPeriod:
    """The cosine drop-fraction period that optimizer step ``step`` (1-based count) is in.

    The official ImageNet code creates ``CosineDecay(0.5, len(train_loader) * 100)`` at the
    start (ImageNet/main.py:230: 100 = t_ex + t_re epochs, up to the first exploration) and
    re-creates it as ``CosineDecay(0.5, len(train_loader) * 70)`` right after each global
    exploration (main.py:371-374: t_re epochs). So the periods are
    [0, (t_ex + t_re)·S] and then [(t_ex + m·t_re)·S, (t_ex + (m+1)·t_re)·S] for
    m = 1..M-1, S = steps per epoch. The step that ends a period still belongs to it
    (there the fraction is the floor); the next step starts the new period.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"drop_decay_period needs steps_per_epoch >= 1, got {steps_per_epoch}")
    total = total_epochs(num_members, cfg)
    epoch = min(max(step - 1, 0) // steps_per_epoch, total - 1)
    plan = epoch_plan(epoch, num_members, cfg)
    # Phases 0 and 1 share the first period: no exploration separates them.
    first = max(plan.phase, 1)
    start_epoch = 0 if first == 1 else cfg.exploration_epochs + (first - 1) * cfg.refinement_epochs
    end_epoch = cfg.exploration_epochs + first * cfg.refinement_epochs
    return DecayPeriod(start_epoch * steps_per_epoch, (end_epoch - start_epoch) * steps_per_epoch)


def _refinement_scale(local_epoch: int, cfg: EDSTConfig) -> float:
    end = 0
    for scale, epochs in refinement_lr_parts(cfg):
        end += epochs
        if local_epoch < end:
            return scale
    raise AssertionError("refinement_lr_epochs sum to refinement_epochs (validated)")


def _check_members(num_members: int) -> None:
    if num_members < 1:
        raise ValueError(f"ensemble.num_members must be >= 1 for EDST, got {num_members}")
