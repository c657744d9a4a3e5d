"""Drop and grow scores: one number per weight, higher = more worth keeping or growing.

Kept apart from the update itself (as in RigL) so a new criterion is one small function.
Growth criteria live in one table, `GROWTH_SCORES`: the engine looks the configured name
up there and hands the function a `ScoreInputs` of one layer. Adding a criterion is one
entry here plus its name in `SparsityConfig.growth` (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoreInputs:
    """What a growth criterion may read for one layer at an update."""

    weight: torch.Tensor  # after this step's optimizer step, inactive entries 0
    grad: torch.Tensor | None  # this step's dense (all-reduced) gradient, if requested
    grad_ema: torch.Tensor | None  # EMA of `Growth.ema_of(grad)` over steps, if requested
    generator: torch.Generator  # shared by all ranks: identical draws everywhere


@dataclass(frozen=True)
class Growth:
    """A growth criterion: its score, and what the engine must collect for it."""

    score: Callable[[ScoreInputs], torch.Tensor]
    needs_gradient: bool = False  # keep this step's dense gradient for the update
    ema_of: Callable[[torch.Tensor], torch.Tensor] | None = None  # keep an EMA of f(grad)


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|w|: the drop criterion (the smallest active magnitudes are dropped)."""
    return weight.detach().abs()


def gradient_score(grad: torch.Tensor) -> torch.Tensor:
    """|∂L/∂w| of the dense gradient (RigL). Under DDP this is the all-reduced gradient."""
    return grad.detach().abs()


def momentum_score(grad_ema: torch.Tensor) -> torch.Tensor:
    """|EMA of dense gradients| (SNFS-style momentum growth)."""
    return grad_ema.abs()


def random_score(
    shape: torch.Size, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform random scores (SET). ``generator`` is shared state, identical on every rank,
    so all replicas draw the same scores with no communication."""
    return torch.rand(shape, generator=generator).to(device)


def _require(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"this growth criterion needs the {what}: call after loss.backward()")
    return value


GROWTH_SCORES: dict[str, Growth] = {
    "gradient": Growth(lambda x: gradient_score(_require(x.grad, "gradient")), needs_gradient=True),
    "random": Growth(lambda x: random_score(x.weight.shape, x.generator, x.weight.device)),
    "momentum": Growth(
        lambda x: momentum_score(_require(x.grad_ema, "gradient EMA")), ema_of=lambda g: g
    ),
    # Empirical Fisher (diagonal): E[g²], as in Fisher pruning. Unlike |E[g]| (momentum) it
    # also favours weights whose gradient is large but changes sign from batch to batch.
    "fisher": Growth(lambda x: _require(x.grad_ema, "squared-gradient EMA"), ema_of=torch.square),
}


def growth_criterion(name: str) -> Growth:
    try:
        return GROWTH_SCORES[name]
    except KeyError:
        raise ValueError(
            f"sparsity.growth={name!r} is not a growth criterion; choose one of "
            f"{sorted(GROWTH_SCORES)}"
        ) from None
