"""Whether a DST run explores for real, said in words: before the run (from the config and
the model's initial weights) and during it (from the engine's survival counts).

A grown weight starts at 0. If it cannot reach the magnitude of the weights it competes
with before the next update, the magnitude drop removes it again: the grown share of the
budget never trains, and the run is a static mask at a lower density (issue 29: a patch
transformer under AdamW kept 20 of 5,716 grown weights). The engine counts it
(`DynamicSparsity.survival_stats`: ``sparse/grown_kept``); this module turns the counts,
or a prediction of them, into one warning line naming the fixes. Torch-free, except
`initial_drop_threshold`, which reads weights.

Low survival alone is not harm: it costs accuracy only when the model still needs the
budget it loses. configs/demo_dst.yaml's CNN (SGD) keeps under 5 % of its grown weights
from its third update on and still fits the digits (test 0.979): by then its train loss is
at 7 % of chance level. The patch transformer (AdamW) keeps under 1 % at 87 % of chance
(test 0.26), the demo ViT 2 % at 53 % of chance (test 0.58 against 0.68 for its static
mask). So the run-time warning also asks that the train loss be still high
(docs/dst_survival.md has the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Under this share of the last update's grown weights kept at the next one, the run is
# told...
LOW_KEPT = 0.05
# ...if its train loss, averaged over an epoch after the first, is still above this share
# of chance level (ln C: the loss of a uniform guess over C classes): the model has not fit
# its data with the budget that does train. Measured (1 seed, docs/dst_survival.md) at the
# first epoch end where kept < 5 %: 0.87 (patch transformer), 0.53 (demo ViT), 0.07 (the
# demo CNN; 0.23 on the tests' 256-digit slice).
UNFIT_LOSS = 0.3
# What a weight grown at 0 reaches in ΔT adaptive (Adam-like) steps of learning rate lr,
# as a share of lr·ΔT, the bound of steps that all point the same way. Measured on the
# patch transformer (bench/patch_transformer.py, AdamW 2e-3, ΔT 25): grown weights reached
# |w| 0.002-0.009 against lr·ΔT = 0.05 (issue 29), i.e. 0.04-0.18; the median is used.
ADAPTIVE_REACH = 0.1
# The prediction warns only when that reach is under half the threshold: the measured reach
# spreads about 2x either side of 0.1·lr·ΔT. Measured (docs/dst_survival.md): the demo ViT
# at f 0.3 (reach 0.0025, threshold 0.0078) and the patch transformer (0.005 vs 0.049) keep
# under 10 % and lose to their static masks; the demo ViT at f 0.1 (threshold 0.0026)
# keeps 19-44 % until the LR tail and is within 0.03 of its static mask.
PREDICTION_MARGIN = 2.0

FIXES = (
    "sparsity.drop_fraction smaller (e.g. 0.1), sparsity.update_every_steps longer, or a "
    "drop that protects new weights (sparsity.drop=magnitude-grace or mest)"
)


def churn_warning(kept: int, grown: int, train_loss: float, num_classes: int) -> str | None:
    """The warning for ``kept`` of the ``grown`` weights of an update surviving the next one
    while the train loss is ``train_loss``, or None when enough survive or the model fits
    its data anyway (`UNFIT_LOSS`)."""
    if grown == 0 or kept / grown >= LOW_KEPT or num_classes < 2:
        return None
    chance = math.log(num_classes)
    if train_loss < UNFIT_LOSS * chance:
        return None
    return (
        f"warning: DST kept only {kept} of the {grown} weights grown at the previous update "
        f"({kept / grown:.1%}), and the train loss is still {train_loss:.3g} "
        f"({train_loss / chance:.0%} of chance level, ln {num_classes}): grown weights start "
        "at 0 and are dropped again before they grow, so the run trains about a static mask "
        f"of lower density (sparse/effective_density) that does not fit the data; try {FIXES}"
    )


def initial_drop_threshold(weights: Mapping[str, torch.Tensor], fraction: float) -> float:
    """The magnitude under which a drop of ``fraction`` of the active weights removes them,
    at initialisation: the ``fraction`` quantile of |w| over all sparse layers (a sample of
    each layer's weights, its mask being random)."""
    import torch

    sample = []
    for weight in weights.values():
        flat = weight.detach().reshape(-1).abs().float()
        step = max(1, flat.numel() // 20_000)  # at most ~20k values per layer
        sample.append(flat[::step])
    values = torch.cat(sample)
    return float(torch.quantile(values, min(max(fraction, 0.0), 1.0)))


def predicted_churn(
    lr: float, every_steps: int, drop_fraction: float, threshold: float
) -> str | None:
    """Before the run, for an optimizer whose step moves a weight by about lr (Adam-like)
    and the plain magnitude drop: a warning when a weight grown at 0 is expected to stay
    well under the drop threshold of the initial weights for its ΔT, else None."""
    reach = ADAPTIVE_REACH * lr * every_steps
    if drop_fraction <= 0.0 or reach * PREDICTION_MARGIN >= threshold:
        return None
    return (
        f"warning: grown weights will likely not survive: in ΔT = {every_steps} steps at lr "
        f"{lr:g} a weight grown at 0 reaches about {reach:.2g} (~{ADAPTIVE_REACH:g}·lr·ΔT), "
        f"under the {threshold:.2g} below which the drop of {drop_fraction:g} of the initial "
        f"weights removes them; try {FIXES}"
    )


def updates_in_run(every_steps: int | None, total_steps: int, stop_step: int | None) -> int:
    """The scheduled DST updates of a run of ``total_steps`` optimizer steps."""
    if not every_steps:
        return 0
    last = total_steps if stop_step is None else min(total_steps, stop_step)
    return max(0, last // every_steps)


def no_update_warning(
    every_steps: int | None, total_steps: int, stop_step: int | None
) -> str | None:
    """A warning when a dynamic run's ΔT makes no update within its steps (it trains a
    static mask), else None."""
    if updates_in_run(every_steps, total_steps, stop_step) > 0:
        return None
    return (
        f"warning: sparsity.update_every_steps = {every_steps} makes no DST update in this "
        f"run's {total_steps} optimizer steps: the mask stays static; set "
        f"sparsity.update_every_steps to about {max(1, math.ceil(total_steps / 10))} (10 "
        "updates) or sparsity.update=none to ask for a static mask"
    )
