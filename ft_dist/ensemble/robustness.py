"""Corruption robustness (SPEC §7): per corruption x severity, and pooled as in the paper.

A benchmark is a list of cells, one per (corruption, severity), each a source of raw
[0, 1] batches that are already corrupted: the built-in torchvision corruptions applied
to the test split (``synthetic_benchmark``), or CIFAR-10-C / CIFAR-100-C / ImageNet-C read
from disk (``ft_dist.data.corrupted``). Predictions are reduced to streaming sums
(``metrics.MetricSums``) as they come, so no probabilities are stored: FreeTickets'
figures pool the predictions of *all* corruptions and severities into one set and compute
accuracy / NLL / ECE on it (ensemble_freetickets.py), which for ImageNet-C is 3.75
million inputs. The mean over cells and every cell are reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ft_dist.ensemble import metrics
from ft_dist.ensemble.corruptions import check_corruptions, corrupt
from ft_dist.ensemble.inputs import Batches, BatchSource


@dataclass(frozen=True)
class CorruptionCell:
    """One corruption at one severity: raw [0, 1] batches, already corrupted."""

    name: str
    severity: int
    source: BatchSource


@dataclass(frozen=True)
class CorruptionBenchmark:
    """The cells to evaluate and a description of where they come from."""

    source: str  # "synthetic", "cifar-c <dir>", "imagenet-c <dir>"
    cells: tuple[CorruptionCell, ...]
    notes: dict[str, Any] = field(default_factory=dict)  # limit, skipped classes, ...


def synthetic_benchmark(
    source: BatchSource,
    names: Sequence[str],
    severities: Sequence[int],
    device: torch.device | str = "cpu",
) -> CorruptionBenchmark:
    """The built-in corruptions applied to each batch of ``source`` (seeded by batch)."""
    check_corruptions(names, severities)

    def cell(name: str, severity: int) -> BatchSource:
        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for index, (images, labels) in enumerate(source()):
                images = images.to(device, torch.float32)
                yield corrupt(images, name, severity, seed=index), labels

        return batches

    cells = tuple(CorruptionCell(n, s, cell(n, s)) for n in names for s in severities)
    return CorruptionBenchmark("synthetic (torchvision.transforms.v2 ops)", cells)


@torch.no_grad()
def stream_sums(
    models: Sequence[nn.Module],
    batches: Batches,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> list[metrics.MetricSums]:
    """Sums for every member, then the ensemble (mean of softmax), over one pass."""
    sums = [metrics.MetricSums() for _ in range(len(models) + 1)]
    for images, labels in batches:
        inputs = normalize(images.to(device, torch.float32))
        probs = torch.stack([model(inputs).float().softmax(dim=1).cpu() for model in models])
        targets = labels.cpu().long()
        for member, member_probs in enumerate(probs):
            sums[member].add_(member_probs, targets)
        sums[-1].add_(metrics.ensemble_probs(probs), targets)
    if sums[-1].count == 0:
        raise ValueError("a corruption set yielded no batches")
    return sums


def corruption_metrics(
    models: Sequence[nn.Module],
    benchmark: CorruptionBenchmark,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Per-cell tables, the mean over cells and the pooled figures, per member and ensemble."""
    if not benchmark.cells:
        raise ValueError(f"the corruption benchmark {benchmark.source} has no cells")
    tables: list[dict[str, dict[str, dict]]] = [{} for _ in range(len(models) + 1)]
    pooled = [metrics.MetricSums() for _ in range(len(models) + 1)]
    for cell in benchmark.cells:
        for model_index, sums in enumerate(stream_sums(models, cell.source(), normalize, device)):
            tables[model_index].setdefault(cell.name, {})[str(cell.severity)] = sums.result()
            pooled[model_index].merge_(sums)
    return {
        "source": benchmark.source,
        "severities": sorted({cell.severity for cell in benchmark.cells}),
        "notes": benchmark.notes,
        "members": tables[:-1],
        "ensemble": tables[-1],
        "mean": {
            "members": [_mean_over_cells(table) for table in tables[:-1]],
            "ensemble": _mean_over_cells(tables[-1]),
        },
        "pooled": {
            "num_samples": pooled[-1].count,
            "members": [sums.result() for sums in pooled[:-1]],
            "ensemble": pooled[-1].result(),
        },
    }


def _mean_over_cells(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    rows = [row for by_severity in table.values() for row in by_severity.values()]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}
