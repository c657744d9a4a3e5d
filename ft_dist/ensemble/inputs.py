"""What ensemble evaluation consumes: re-iterable raw batches, and the normalisation after."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
BatchSource = Callable[[], Batches]  # a fresh pass over the data each call


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std the models were trained with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
