"""The averaged-softmax ensemble as a `torch.export` program that needs only PyTorch.

    program = torch.export.load("ensemble.pt2").module()
    probs = program(images)   # images: float32 [N, C, H, W] in [0, 1]; probs: [N, K]

The program normalises with the training mean/std itself and returns the mean of the
members' softmax probabilities (SPEC §7), exactly what `ft-dist evaluate` scores. The
graph holds only ATen operators and dense (masked) weights, so loading it imports nothing
from ft_dist; the batch dimension is dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

MAX_BATCH = 65536


class EnsembleProgram(nn.Module):
    """Normalise, run every member, average their softmax probabilities."""

    def __init__(
        self, members: Sequence[nn.Module], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble program needs at least one member")
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = (images - self.mean) / self.std
        probs = [member(inputs).float().softmax(dim=1) for member in self.members]
        return torch.stack(probs).mean(dim=0)


def export_program(
    program: EnsembleProgram, input_shape: tuple[int, int, int], path: Path
) -> torch.export.ExportedProgram:
    """Trace ``program`` (eval mode, CPU) with a dynamic batch and save it to ``path``."""
    program = program.eval().cpu()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        exported = torch.export.export(program, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(exported, str(path))
    return exported
