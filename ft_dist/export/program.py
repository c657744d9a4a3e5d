"""The averaged-softmax ensemble as a `torch.export` program that needs only PyTorch.

    program = torch.export.load("ensemble.pt2").module()
    probs = program(images)   # images: float32 [N, C, H, W] in [0, 1]; probs: [N, K]

The program normalises with the training mean/std itself and returns the mean of the
members' softmax probabilities (SPEC §7), exactly what `ft-dist evaluate` scores. The
graph holds only ATen operators and dense (masked) weights, so loading it imports nothing
from ft_dist; the batch dimension is dynamic.

`serving_program` is the form `ft-dist export` ships and `ft-dist bench infer` times (the
dense baseline included): each BatchNorm that directly follows a conv or linear layer is
folded into that layer's weight and bias, and weights and activations are channels_last.
Both compute the same function up to float rounding and speed up a dense model as much as
the members on CPU (oneDNN), so the ensemble is compared against a dense model served as
well as it is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ft_dist.private_api import batch_norm_base

MAX_BATCH = 65536


class EnsembleProgram(nn.Module):
    """Normalise, run every member, average their softmax probabilities."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if not members:
            raise ValueError("an ensemble program needs at least one member")
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = (images - self.mean) / self.std
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        probs = [member(inputs).float().softmax(dim=1) for member in self.members]
        return torch.stack(probs).mean(dim=0)


def fold_norms(member: nn.Module) -> tuple[nn.Module, int]:
    """(``member`` with every BatchNorm that directly follows a conv/linear layer folded into
    it, how many were folded), in eval mode. A model torch.fx cannot trace symbolically
    (data-dependent control flow) comes back unchanged with 0."""
    from torch.fx.experimental.optimization import fuse

    def norms(module: nn.Module) -> int:
        return sum(isinstance(m, batch_norm_base()) for m in module.modules())

    try:
        folded = fuse(member.eval())
    except Exception:  # noqa: BLE001 - any tracing failure: serve the member as it is
        return member.eval(), 0
    return folded.eval(), norms(member) - norms(folded)


def serving_program(
    members: Sequence[nn.Module], mean: Sequence[float], std: Sequence[float]
) -> tuple[EnsembleProgram, list[int]]:
    """(The ensemble program with norms folded and channels_last weights, the number of
    norms folded per member)."""
    folded = [fold_norms(member) for member in members]
    program = EnsembleProgram([m for m, _ in folded], mean, std, channels_last=True)
    return program.to(memory_format=torch.channels_last).eval(), [n for _, n in folded]


def trace_program(
    program: EnsembleProgram, input_shape: Sequence[int]
) -> torch.export.ExportedProgram:
    """``program`` (eval mode, CPU) through torch.export with a dynamic batch."""
    program = program.eval().cpu()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(program, (example,), dynamic_shapes={"images": {0: batch}})


def export_program(
    program: EnsembleProgram, input_shape: tuple[int, int, int], path: Path
) -> torch.export.ExportedProgram:
    """Trace ``program`` (`trace_program`) and save it to ``path``."""
    exported = trace_program(program, input_shape)
    with warnings.catch_warnings():  # torch's note on channels_last weights: they save intact
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(exported, str(path))
    return exported
