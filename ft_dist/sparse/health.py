"""Whether a DST run explores for real, said in words: before the run (from the config and
the model's initial weights) and during it (from the engine's survival counts).

A grown weight starts at 0. If it cannot reach the magnitude of the weights it competes
with before the next update, the magnitude drop removes it again: the grown share of the
budget never trains, and the run is a static mask at a lower density (issue 29: a patch
transformer under AdamW kept 20 of 5,716 grown weights). The engine counts it
(`DynamicSparsity.survival_stats`: ``sparse/grown_kept``); this module turns the counts,
or a prediction of them, into one warning line naming the fixes. Torch-free, except
`initial_drop_threshold`, which reads weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Under this share of grown weights kept at the next update, the run is told.
LOW_KEPT = 0.05
# What a weight grown at 0 reaches in ΔT adaptive (Adam-like) steps of learning rate lr,
# as a share of lr·ΔT, the bound of steps that all point the same way. Measured on the
# patch transformer (bench/patch_transformer.py, AdamW 2e-3, ΔT 25): grown weights reached
# |w| 0.002-0.009 against lr·ΔT = 0.05 (issue 29), i.e. 0.04-0.18; the median is used.
ADAPTIVE_REACH = 0.1

FIXES = (
    "sparsity.drop_fraction smaller (e.g. 0.1), sparsity.update_every_steps longer, or a "
    "drop that protects new weights (sparsity.drop=magnitude-grace or mest)"
)


def churn_warning(kept: int, grown: int, updates: int) -> str | None:
    """The warning for ``kept`` of ``grown`` weights surviving the update after their growth
    (summed over the run's ``updates`` so far), or None when enough survive."""
    if grown == 0 or kept / grown >= LOW_KEPT:
        return None
    return (
        f"warning: DST keeps only {kept} of {grown} grown weights ({kept / grown:.1%}) at the "
        f"next update, over {updates} updates: they start at 0 and are dropped again before "
        "they grow, so the run trains about a static mask of lower density "
        f"(sparse/effective_density); try {FIXES}"
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
    """Before the run, for an optimizer whose step moves a weight by about lr (Adam-like):
    a warning when a weight grown at 0 is expected to stay under the drop threshold of the
    initial weights for its ΔT, else None."""
    reach = ADAPTIVE_REACH * lr * every_steps
    if drop_fraction <= 0.0 or reach >= threshold:
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
