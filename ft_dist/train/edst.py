"""The EDST phase plan (SPEC §5) as a pure function of the epoch.

One EDST run of T = t_ex + M * t_re epochs yields M tickets:

    epochs [0, t_ex)                         phase 0: exploration at the base LR
    epochs [t_ex + (m-1) t_re, t_ex + m t_re)  phase m = 1..M: refinement

Inside a refinement phase the LR is base x 0.1 for the first half and base x 0.01 for
the second half ("first half" = local epoch e with 2e < t_re, so an odd t_re gives the
extra epoch to the higher LR). After the last epoch of phase m the phase's ticket is
finalised and, if m < M, one global exploration (a DST update with drop fraction q)
moves the network to a new basin before phase m+1 starts again at base x 0.1.

Being a pure function of (epoch, M, cfg) the plan needs no state of its own: a run
resumed at any epoch recomputes exactly where it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ft_dist.train.ensemble_config import EDSTConfig

EXPLORATION_LR_SCALE = 1.0
REFINEMENT_LR_SCALES = (0.1, 0.01)


@dataclass(frozen=True)
class EpochPlan:
    """What the training loop does in one epoch of an EDST run."""

    epoch: int
    phase: int  # 0 = exploration, 1..M = refinement phase (the member being trained)
    lr_scale: float  # multiplies the base learning rate for the whole epoch
    phase_end: bool  # last epoch of a refinement phase: finalise that phase's ticket after it
    explore_after: bool  # phase_end and phase < M: one global exploration after this epoch


def total_epochs(num_members: int, cfg: EDSTConfig) -> int:
    """T = t_ex + M * t_re."""
    _check_members(num_members)
    return cfg.exploration_epochs + num_members * cfg.refinement_epochs


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
    first_half = 2 * local < cfg.refinement_epochs
    lr_scale = REFINEMENT_LR_SCALES[0] if first_half else REFINEMENT_LR_SCALES[1]
    phase_end = local == cfg.refinement_epochs - 1
    return EpochPlan(
        epoch,
        phase,
        lr_scale,
        phase_end=phase_end,
        explore_after=phase_end and phase < num_members,
    )


def phase_epochs(phase: int, num_members: int, cfg: EDSTConfig) -> range:
    """The epochs of `phase` (0 = exploration, 1..M refinement), e.g. to find its ticket."""
    _check_members(num_members)
    if not 0 <= phase <= num_members:
        raise ValueError(f"EDST phase {phase} is outside 0..{num_members} (num_members)")
    if phase == 0:
        return range(0, cfg.exploration_epochs)
    start = cfg.exploration_epochs + (phase - 1) * cfg.refinement_epochs
    return range(start, start + cfg.refinement_epochs)


def _check_members(num_members: int) -> None:
    if num_members < 1:
        raise ValueError(f"ensemble.num_members must be >= 1 for EDST, got {num_members}")
