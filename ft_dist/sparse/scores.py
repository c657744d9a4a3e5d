"""Drop and grow criteria: one number per weight, higher = more worth keeping or growing.

Kept apart from the update itself (as in RigL) so a new criterion is one table entry. The two
tables below, `GROWTH_SCORES` and `DROP_SCORES`, are the only lists of criteria: config
validation, the choices of `ft-dist flops` and `bench step`, DeepSpeed compatibility, EDST
exploration checks and FLOPs pricing are all derived from their entries.

What a score receives (`ScoreInputs`, one layer, at an update, before the mask changes):

* ``weight``: the layer's weight after this step's optimizer step, **already masked**:
  inactive entries are exactly 0. A growth score built on the weight (|w·g|) therefore
  gives 0 to every inactive position; only the gradient can rank those.
* ``mask``: the current bool mask (True = active).
* ``grad``: this step's **dense** gradient (all-reduced across ranks, inactive positions
  included), when the criterion sets ``needs_gradient``; else None.
* ``grad_ema``: an EMA (factor ``sparsity.momentum_beta``) of ``ema_of(grad)`` over every
  step since the start, when the criterion sets ``ema_of``; else None.
* ``generator``: a CPU generator in the same state on every rank (identical draws).
* ``recent``: the bool positions grown at the previous update (None before the first).

The drop score is read on active positions only (the lowest-scoring active weights leave);
the growth score on positions inactive after the drop (the highest-scoring ones enter;
a weight just dropped may be grown back and then starts at 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ft_dist.utils import table_entry

if TYPE_CHECKING:  # torch is imported by the scores when they run, not by the table
    import torch


@dataclass(frozen=True)
class ScoreInputs:
    """What a drop or growth criterion may read for one layer at an update (module docs)."""

    weight: torch.Tensor
    grad: torch.Tensor | None
    grad_ema: torch.Tensor | None
    generator: torch.Generator
    mask: torch.Tensor | None = None
    # A layer whose removed channels were cut out (a shrinking run): its shape before any
    # cut, and per cut dimension the positions it kept. Random scores are drawn at the full
    # shape and sliced, so the shared generator moves as in the masked twin.
    full_shape: tuple[int, ...] | None = None
    kept: Mapping[int, torch.Tensor] | None = None
    recent: torch.Tensor | None = None  # grown at the previous update

    def uniform(self) -> torch.Tensor:
        """Uniform [0, 1) scores of the weight's positions from the shared generator."""
        return random_score(self.full_shape or self.weight.shape, self.generator, self.kept).to(
            self.weight.device
        )


@dataclass(frozen=True)
class Criterion:
    """A drop or growth criterion: its score, and what the engine must collect for it.

    ``needs_gradient``: keep this step's dense gradient at an update. ``ema_of=f``: keep an
    EMA of ``f(grad)`` every step (needs the dense gradient every step, so it is refused by
    strategies that only see masked, sharded gradients: DeepSpeed ZeRO).
    ``exempts`` (drop): the score gives +inf to weights that must stay this update, and the
    drop fraction applies to the other active weights only (fewer are swapped).
    ``balanced`` (growth): every output unit (row, dim 0) grows back as many weights as the
    drop took from it, its best-scoring ones, so no row (and no q/k/v block of a fused
    projection, whose rows they are) gains weights from another.
    """

    score: Callable[[ScoreInputs], torch.Tensor]
    summary: str
    needs_gradient: bool = False
    ema_of: Callable[[torch.Tensor], torch.Tensor] | None = None
    exempts: bool = False
    balanced: bool = False

    @property
    def needs_every_step_gradient(self) -> bool:
        return self.ema_of is not None


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|w|: the default drop criterion (the smallest active magnitudes are dropped)."""
    return weight.detach().abs()


def gradient_score(grad: torch.Tensor) -> torch.Tensor:
    """|∂L/∂w| of the dense gradient (RigL). Under DDP this is the all-reduced gradient."""
    return grad.detach().abs()


def momentum_score(grad_ema: torch.Tensor) -> torch.Tensor:
    """|EMA of dense gradients| (SNFS-style momentum growth)."""
    return grad_ema.abs()


def saliency_score(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """|w · ∂L/∂w|: the first-order change of the loss when w is removed (SNIP)."""
    return (weight.detach() * grad.detach().to(weight.dtype)).abs()


def mest_score(weight: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, lam: float):
    """|w| + λ|g| (MEST, Yuan et al. NeurIPS 2021), each term divided by its mean over the
    layer's active weights so that λ weighs them the same in every layer and under any
    optimizer (the paper's raw sum depends on the gradient's scale). A weight grown at 0
    whose gradient is large survives the drop that its magnitude alone would lose."""
    import torch

    magnitude = weight.detach().abs()
    slope = grad.detach().to(weight.dtype).abs()
    active = mask.to(weight.dtype)
    count = active.sum().clamp_min(1.0)
    mean_w = (magnitude * active).sum() / count
    mean_g = (slope * active).sum() / count
    tiny = torch.finfo(weight.dtype).tiny
    return magnitude / mean_w.clamp_min(tiny) + lam * slope / mean_g.clamp_min(tiny)


def grace_score(weight: torch.Tensor, recent: torch.Tensor | None) -> torch.Tensor:
    """|w|, with +inf for the weights grown at the previous update: they are exempt from
    this drop (a grace period of one update interval to grow from 0)."""
    score = magnitude_score(weight)
    return score if recent is None else score.masked_fill(recent, math.inf)


def random_score(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator,
    kept: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Uniform random scores (SET), on the CPU. ``generator`` is shared state, identical on
    every rank, so all replicas draw the same scores with no communication. ``kept``: per
    dimension, the positions to keep of the ``shape`` drawn (a layer with channels cut)."""
    import torch

    scores = torch.rand(shape, generator=generator)
    for dim, index in sorted((kept or {}).items()):
        scores = scores.index_select(dim, index.cpu())
    return scores


def _require(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"this criterion needs the {what}: call after loss.backward()")
    return value


# λ of the MEST drop: the gradient term, relative to its layer mean, weighs as much as the
# magnitude relative to its own.
MEST_LAMBDA = 1.0

GROWTH_SCORES: dict[str, Criterion] = {
    "gradient": Criterion(
        lambda x: gradient_score(_require(x.grad, "gradient")),
        "|g| of the dense gradient (RigL)",
        needs_gradient=True,
    ),
    "random": Criterion(
        lambda x: x.uniform(),
        "uniform random (SET)",
    ),
    "momentum": Criterion(
        lambda x: momentum_score(_require(x.grad_ema, "gradient EMA")),
        "|EMA of g| (SNFS-style)",
        ema_of=lambda g: g,
    ),
    # Empirical Fisher (diagonal): E[g²], as in Fisher pruning. Unlike |E[g]| (momentum) it
    # also favours weights whose gradient is large but changes sign from batch to batch.
    "fisher": Criterion(
        lambda x: _require(x.grad_ema, "squared-gradient EMA"),
        "EMA of g² (empirical Fisher)",
        ema_of=lambda g: g.square(),
    ),
    "gradient-balanced": Criterion(
        lambda x: gradient_score(_require(x.grad, "gradient")),
        "|g| of the dense gradient, each output unit regrowing what it lost (balanced RigL)",
        needs_gradient=True,
        balanced=True,
    ),
    "random-balanced": Criterion(
        lambda x: x.uniform(),
        "uniform random, each output unit regrowing what it lost (balanced SET)",
        balanced=True,
    ),
}

DROP_SCORES: dict[str, Criterion] = {
    "magnitude": Criterion(lambda x: magnitude_score(x.weight), "|w| (RigL, SET, the paper)"),
    # Scores active weights only, whose gradients the sparse backward computes anyway: no
    # dense gradient and no extra FLOPs.
    "saliency": Criterion(
        lambda x: saliency_score(x.weight, _require(x.grad, "gradient")),
        "|w·g| (SNIP saliency of the active weights)",
        needs_gradient=True,
    ),
    "mest": Criterion(
        lambda x: mest_score(
            x.weight, _require(x.grad, "gradient"), _require(x.mask, "mask"), MEST_LAMBDA
        ),
        f"|w|/mean|w| + {MEST_LAMBDA:g}·|g|/mean|g| over the active weights (MEST)",
        needs_gradient=True,
    ),
    "magnitude-grace": Criterion(
        lambda x: grace_score(x.weight, x.recent),
        "|w|, weights grown at the previous update exempt (a grace period of one ΔT)",
        exempts=True,
    ),
}


def growth_criterion(name: str) -> Criterion:
    return table_entry(GROWTH_SCORES, name, "sparsity.growth")


def drop_criterion(name: str) -> Criterion:
    return table_entry(DROP_SCORES, name, "sparsity.drop")


def table_help(table: dict[str, Criterion]) -> str:
    """'name: summary' for every entry, for config field descriptions and --help."""
    return "; ".join(f"{name}: {entry.summary}" for name, entry in sorted(table.items()))
