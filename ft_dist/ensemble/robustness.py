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

import time
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


def _synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def member_log_probs(
    models: Sequence[nn.Module],
    batches: Batches,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Every member on each batch of raw images, normalised first: per batch the members'
    log-softmax [M, B, K] (float32, CPU), the targets [B] (int64, CPU) and the seconds the
    members' forward passes took (data loading and copies excluded). The one member loop of
    evaluation (`evaluate.predict`) and of the corruption benchmark (`stream_sums`)."""
    for images, labels in batches:
        inputs = normalize(images.to(device, torch.float32))
        _synchronize(device)
        start = time.perf_counter()
        outputs = [model(inputs).float().log_softmax(dim=1) for model in models]
        _synchronize(device)
        seconds = time.perf_counter() - start
        yield torch.stack([output.cpu() for output in outputs]), labels.cpu().long(), seconds


@torch.no_grad()
def stream_sums(
    models: Sequence[nn.Module],
    batches: Batches,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    temperatures: Sequence[float] | None = None,
    num_bins: int = metrics.NUM_ECE_BINS,
) -> tuple[list[metrics.MetricSums], list[metrics.MetricSums] | None]:
    """Sums for every member, then the ensemble (mean of softmax), over one pass.

    With ``temperatures`` (members, then ensemble) also the sums of the calibrated
    predictions softmax(log p / T); otherwise the second list is None.
    """
    count = len(models) + 1
    sums = [metrics.MetricSums(num_bins) for _ in range(count)]
    calibrated = [metrics.MetricSums(num_bins) for _ in range(count)] if temperatures else None
    for log_probs, targets, _ in member_log_probs(models, batches, normalize, device):
        all_log_probs = [*log_probs, metrics.ensemble_log_probs(log_probs)]
        for index, model_log_probs in enumerate(all_log_probs):
            sums[index].add_(model_log_probs.exp(), targets)
            if calibrated is not None and temperatures is not None:
                scaled = metrics.temperature_scale(model_log_probs, temperatures[index])
                calibrated[index].add_(scaled, targets)
    if sums[-1].count == 0:
        raise ValueError("a corruption set yielded no batches")
    return sums, calibrated


Table = dict[str, dict[str, dict[str, float]]]  # corruption -> severity -> metrics


def corruption_metrics(
    models: Sequence[nn.Module],
    benchmark: CorruptionBenchmark,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    temperatures: Sequence[float] | None = None,
    num_bins: int = metrics.NUM_ECE_BINS,
) -> dict[str, Any]:
    """Per-cell tables, the mean over cells and the pooled figures, per member and ensemble.

    ``mean`` is cA / cNLL / cECE as google/uncertainty-baselines reports them: per severity
    the mean over corruption types (``by_severity``), then the mean over severities.
    ``pooled`` is the paper's figure: every cell's predictions as one set. With
    ``temperatures`` (fitted on the validation split) ``calibrated`` holds the same four
    entries for the temperature-scaled predictions.
    """
    if not benchmark.cells:
        raise ValueError(f"the corruption benchmark {benchmark.source} has no cells")
    count = len(models) + 1
    tables: list[Table] = [{} for _ in range(count)]
    pooled = [metrics.MetricSums(num_bins) for _ in range(count)]
    cal_tables: list[Table] = [{} for _ in range(count)]
    cal_pooled = [metrics.MetricSums(num_bins) for _ in range(count)]
    for cell in benchmark.cells:
        sums, calibrated = stream_sums(
            models,
            cell.source(),
            normalize,
            device,
            temperatures=temperatures,
            num_bins=num_bins,
        )
        for index in range(count):
            tables[index].setdefault(cell.name, {})[str(cell.severity)] = sums[index].result()
            pooled[index].merge_(sums[index])
            if calibrated is not None:
                cell_sums = calibrated[index]
                cal_tables[index].setdefault(cell.name, {})[str(cell.severity)] = cell_sums.result()
                cal_pooled[index].merge_(cell_sums)
    result = {
        "source": benchmark.source,
        "severities": sorted({cell.severity for cell in benchmark.cells}),
        "notes": benchmark.notes,
        **_summaries(tables, pooled),
    }
    if temperatures is not None:
        result["calibrated"] = {
            "temperatures": list(temperatures),
            **_summaries(cal_tables, cal_pooled),
        }
    return result


def _summaries(tables: list[Table], pooled: list[metrics.MetricSums]) -> dict[str, Any]:
    return {
        "members": tables[:-1],
        "ensemble": tables[-1],
        "by_severity": {
            "members": [_mean_by_severity(table) for table in tables[:-1]],
            "ensemble": _mean_by_severity(tables[-1]),
        },
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


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


def _mean_by_severity(table: Table) -> dict[str, dict[str, float]]:
    """severity -> the mean over the corruption types evaluated at that severity."""
    severities = sorted({s for by_severity in table.values() for s in by_severity}, key=int)
    return {
        s: _mean([by_severity[s] for by_severity in table.values() if s in by_severity])
        for s in severities
    }


def _mean_over_cells(table: Table) -> dict[str, float]:
    """cA / cNLL / cECE: the mean over severities of the mean over corruption types.

    With every corruption at every severity (CIFAR-C, ImageNet-C) this is the plain mean
    over cells; google/uncertainty-baselines' `aggregate_corrupt_metrics` averages in the
    same order.
    """
    return _mean(list(_mean_by_severity(table).values()))
