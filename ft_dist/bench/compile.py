"""torch.compile with dynamic masks: compile the model, keep DST in eager, count recompiles.

Why masked training compiles once: ``DynamicSparsity`` keeps its masks as tensors and
applies them *outside* the compiled graph (to ``.grad`` before the optimizer step and to
the weights after it), updating masks, weights and optimizer state in place. The compiled
forward/backward sees the same parameter tensors with the same shapes every step, so no
Dynamo guard fails when a mask changes. ``model.compile()`` (in place) rather than
``torch.compile(model)`` keeps parameter names free of the ``_orig_mod.`` prefix.

Counting: Dynamo increments ``torch._dynamo.utils.counters["stats"]["unique_graphs"]`` once
per graph it compiles (first compiles and recompiles alike); graphs compiled after the
warm-up are recompiles. The counter is internal but long-standing (torch 2.0 on); the test
in tests/bench/test_compile.py fails loudly if it stops counting a forced recompile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CompileCount:
    """Graphs Dynamo compiled inside a ``count_compiles()`` block (final once it exits)."""

    graphs: int = 0


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    from ft_dist.private_api import dynamo_graph_count

    count = CompileCount()
    before = dynamo_graph_count()
    try:
        yield count
    finally:
        count.graphs = dynamo_graph_count() - before


def compile_model_(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> None:
    """Compile ``model``'s forward in place (names unchanged, DynamicSparsity still works)."""
    model.compile(backend=backend, mode=mode)


def inactive_nonzero(params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> int:
    """Number of weights that should be exactly zero under their mask but are not."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(params[n][~m])) for n, m in masks.items())
