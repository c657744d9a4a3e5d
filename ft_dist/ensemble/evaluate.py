"""Evaluate an ensemble of tickets: member and ensemble metrics, OoD, corruptions, diversity.

The data arrives as an iterable of `(images, labels)` batches of *raw* float images in
[0, 1] (before normalisation), so a corruption can act on the image itself; the training
normalisation is applied afterwards, to in-distribution and OoD inputs alike (SPEC §7).
Every member sees each batch once per pass; the ensemble prediction is the mean of the
members' softmax probabilities, never of their logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.ensemble import metrics
from ft_dist.ensemble.inputs import Batches, BatchSource, Normalization
from ft_dist.ensemble.robustness import (
    CorruptionBenchmark,
    corruption_metrics,
    synthetic_benchmark,
)
from ft_dist.ensemble.tickets import Layout, Ticket, build_member, check_compatible

__all__ = ["Batches", "BatchSource", "Normalization", "evaluate_tickets", "predict"]


@dataclass(frozen=True)
class Predictions:
    """Every member's probabilities on one pass over a dataset."""

    member_probs: torch.Tensor  # [M, N, K]
    targets: torch.Tensor  # [N]


@torch.no_grad()
def predict(
    models: Sequence[nn.Module],
    batches: Batches,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> Predictions:
    """Run every member on every batch of raw images, normalised first."""
    probs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for images, labels in batches:
        inputs = normalize(images.to(device, torch.float32))
        probs.append(torch.stack([model(inputs).float().softmax(dim=1).cpu() for model in models]))
        targets.append(labels.cpu().long())
    if not probs:
        raise ValueError("the evaluation data yielded no batches")
    return Predictions(torch.cat(probs, dim=1), torch.cat(targets))


def _ood_metrics(probs: torch.Tensor, ood: torch.Tensor) -> dict[str, float]:
    return {
        "auroc_max_prob": metrics.ood_auroc(probs, ood, "max_prob"),
        "auroc_entropy": metrics.ood_auroc(probs, ood, "entropy"),
    }


def score_predictions(
    test: Predictions, ood_sets: Mapping[str, Predictions] | None = None
) -> dict[str, Any]:
    """Metrics for each member and for the ensemble, plus prediction diversity.

    Each row's ``ood`` holds the first OoD set's AUROCs; ``ood_sets`` holds every set's.
    """
    ood_sets = dict(ood_sets or {})
    rows: list[dict[str, Any]] = []
    all_probs = [*test.member_probs, metrics.ensemble_probs(test.member_probs)]
    for index, probs in enumerate(all_probs):
        row: dict[str, Any] = {"test": metrics.classification_metrics(probs, test.targets)}
        for name, ood in ood_sets.items():
            members = ood.member_probs
            other = members[index] if index < len(members) else metrics.ensemble_probs(members)
            row.setdefault("ood_sets", {})[name] = _ood_metrics(probs, other)
        if ood_sets:
            row["ood"] = next(iter(row["ood_sets"].values()))
        rows.append(row)
    disagreement = metrics.pairwise_disagreement(test.member_probs)
    kl = metrics.pairwise_kl(test.member_probs)
    diversity = {
        "disagreement": disagreement.tolist(),
        "kl": kl.tolist(),
        "mean_disagreement": metrics.off_diagonal_mean(disagreement),
        "mean_kl": metrics.off_diagonal_mean(kl),
    }
    return {"members": rows[:-1], "ensemble": rows[-1], "diversity": diversity}


def reliability(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, list[float]]:
    """The reliability-diagram data of one model, as JSON-able lists."""
    bins = metrics.reliability_bins(probs, targets)
    return {
        "edges": bins.edges.tolist(),
        "counts": bins.counts.tolist(),
        "confidence": bins.confidence.tolist(),
        "accuracy": bins.accuracy.tolist(),
    }


def member_names(count: int) -> list[str]:
    """Members are named by their position in the ensemble: member_1 .. member_M."""
    return [f"member_{m + 1}" for m in range(count)]


def _member_info(name: str, ticket: Ticket, run_root: Path) -> dict[str, Any]:
    meta = {key: value for key, value in ticket.meta.items() if key != "model"}
    try:
        relative = str(ticket.path.relative_to(run_root))
    except ValueError:
        relative = str(ticket.path)
    densities = ticket.layer_densities()
    total = sum(int(mask.numel()) for mask in ticket.masks.values())
    active = sum(int(mask.sum()) for mask in ticket.masks.values())
    return {
        "name": name,
        "ticket": relative,
        "model": ticket.meta["model"],
        "meta": meta,
        "mask_density": active / total if total else 1.0,
        "layer_densities": densities,
    }


def _flops(tickets: Sequence[Ticket], layout: Layout) -> dict[str, float | None]:
    """Inference FLOPs (M * f_S) and ensemble training FLOPs from the tickets' metadata."""
    from ft_dist.models import build_model
    from ft_dist.sparse.flops import forward_flops

    sparse_total = 0.0
    dense = 0.0
    for ticket in tickets:
        meta = ticket.meta
        with torch.device("meta"):
            model = build_model(
                str(meta["model"]),
                int(meta["num_classes"]),
                int(meta["in_channels"]),
                int(meta["image_size"]),
            )
        dense, sparse = forward_flops(model, ticket.input_shape(), ticket.layer_densities())
        sparse_total += sparse
    train = [ticket.meta.get("train_flops") for ticket in tickets]
    known = [float(value) for value in train if value is not None]
    # EDST tickets carry the run's cumulative FLOPs; PDST members are separate runs.
    ensemble_train = (sum(known) if layout == "experiment" else max(known)) if known else None
    return {
        "dense_forward_flops": float(dense),
        "inference_flops": sparse_total,
        "inference_flops_relative_to_dense": sparse_total / dense if dense else None,
        "train_flops": ensemble_train,
    }


def evaluate_tickets(
    tickets: Sequence[Ticket],
    layout: Layout,
    run_root: Path,
    test_source: BatchSource,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    ood_sources: Mapping[str, BatchSource] | None = None,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (),
    benchmark: CorruptionBenchmark | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The full report dict (see ft_dist.ensemble.report) for one ensemble of tickets.

    ``corruptions`` x ``severities`` of the built-in corruptions are applied to the test
    data; ``benchmark`` evaluates prepared cells instead (CIFAR-C / ImageNet-C files).
    """
    if corruptions and benchmark is not None:
        raise ValueError("give built-in corruption names or a benchmark of files, not both")
    tickets = list(tickets)
    check_compatible(tickets)
    models = [build_member(ticket, device) for ticket in tickets]
    test = predict(models, test_source(), normalize, device=device)
    ood = {
        name: predict(models, src(), normalize, device) for name, src in (ood_sources or {}).items()
    }
    counts = {name: int(preds.targets.numel()) for name, preds in ood.items()}
    report: dict[str, Any] = {
        "run_dir": str(run_root),
        "layout": layout,
        "num_members": len(tickets),
        "num_test_samples": int(test.targets.numel()),
        "num_ood_samples": next(iter(counts.values()), None),
        "ood_samples": counts,
    }
    report.update(score_predictions(test, ood))
    names = member_names(len(tickets))
    for member, name, ticket in zip(report["members"], names, tickets, strict=True):
        member.update(_member_info(name, ticket, run_root))
    report["ensemble"]["name"] = "ensemble"
    jaccard = metrics.pairwise_mask_jaccard([ticket.masks for ticket in tickets])
    report["diversity"]["mask_jaccard"] = jaccard.tolist()
    report["diversity"]["mean_mask_jaccard"] = metrics.off_diagonal_mean(jaccard)
    report["reliability"] = {
        name: reliability(test.member_probs[m], test.targets) for m, name in enumerate(names)
    }
    report["reliability"]["ensemble"] = reliability(
        metrics.ensemble_probs(test.member_probs), test.targets
    )
    report["flops"] = _flops(tickets, layout)
    if corruptions:
        benchmark = synthetic_benchmark(test_source, corruptions, severities, device)
    if benchmark is not None:
        report["corruptions"] = corruption_metrics(models, benchmark, normalize, device)
    return report
