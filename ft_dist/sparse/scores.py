"""Drop and grow scores: one number per weight, higher = more worth keeping or growing.

Kept apart from the update itself (as in RigL) so a new criterion is one small function.
"""

from __future__ import annotations

import torch


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
