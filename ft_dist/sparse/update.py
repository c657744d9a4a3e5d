"""One prune-and-grow update of one layer (SPEC §4): exact counts, as pure tensor functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerUpdate:
    mask: torch.Tensor  # new bool mask, same shape as the layer
    dropped: torch.Tensor  # flat indices deactivated by the drop
    grown: torch.Tensor  # flat indices activated by the grow (may include just-dropped ones)


def num_to_drop(num_active: int, drop_fraction: float, *, official: bool = False) -> int:
    """k = ceil(f · n - 1e-9), never more than the active weights.

    The 1e-9 keeps a product that lands just above an integer in floating point on that
    integer: 0.07 · 100 = 7.000000000000001 drops 7. ``official=True`` (the engine passes
    it under ``sparsity.compat: official-*``) is the official code's plain
    ``math.ceil(rate * nonzeros)`` (sparselearning/core.py ``magnitude_death``,
    ImageNet/funcs.py ``magnitude_prune``), which drops 8 there.
    """
    product = drop_fraction * num_active
    return min(num_active, math.ceil(product if official else product - 1e-9))


def prune_and_grow(
    mask: torch.Tensor,
    drop_score: torch.Tensor,
    grow_score: torch.Tensor,
    num_swap: int,
    *,
    balanced: bool = False,
) -> LayerUpdate:
    """Drop the ``num_swap`` active weights with the lowest ``drop_score``, then activate the
    ``num_swap`` highest-``grow_score`` positions among those inactive after the drop
    (``balanced``: in every row, i.e. output unit, as many as the drop took from that row).

    The number of active weights is unchanged. Ties go to the lower flat index
    (`lowest` / `highest`), so identical scores on every rank give identical masks, and a
    layer with some channels cut out (a shrinking run) picks what its masked twin picks.
    """
    flat_mask = mask.reshape(-1)
    if num_swap == 0:
        empty = torch.empty(0, dtype=torch.long, device=mask.device)
        return LayerUpdate(mask.clone(), empty, empty)
    drop_candidates = drop_score.reshape(-1).masked_fill(~flat_mask, math.inf)
    dropped = lowest(drop_candidates, num_swap)
    new_mask = flat_mask.clone()
    new_mask[dropped] = False
    grow_candidates = grow_score.reshape(-1).masked_fill(new_mask, -math.inf)
    if balanced:
        rows = mask.shape[0]
        lost = torch.zeros(rows, dtype=torch.long, device=mask.device)
        lost.index_add_(0, dropped // (flat_mask.numel() // rows), torch.ones_like(dropped))
        grown = highest_per_row(grow_candidates.view(rows, -1), lost)
    else:
        grown = highest(grow_candidates, num_swap)
    new_mask[grown] = True
    return LayerUpdate(new_mask.view_as(mask), dropped, grown)


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` lowest ``scores``, ties to the lower index. Index-stable
    (unlike ``torch.topk``): removing positions that are not chosen keeps the choice."""
    return torch.sort(scores.reshape(-1), stable=True).indices[:count]


def highest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` highest ``scores``, ties to the lower index."""
    return torch.sort(scores.reshape(-1), descending=True, stable=True).indices[:count]


def highest_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Flat indices of the ``counts[r]`` highest ``scores`` of every row ``r`` of a 2-d
    tensor, ties to the lower index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    take = torch.arange(scores.shape[1], device=scores.device) < counts[:, None]
    offsets = torch.arange(scores.shape[0], device=scores.device)[:, None] * scores.shape[1]
    return (order + offsets)[take]


def random_mask(shape: torch.Size, num_active: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask with exactly ``num_active`` True entries at random positions (on the CPU)."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:num_active]] = True
    return mask.view(shape)
