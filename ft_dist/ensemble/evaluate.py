"""Evaluate an ensemble of tickets: member and ensemble metrics, OoD, corruptions, diversity.

The data arrives as an iterable of `(images, labels)` batches of *raw* float images in
[0, 1] (before normalisation), so a corruption can act on the image itself; the training
normalisation is applied afterwards, to in-distribution and OoD inputs alike (SPEC §7).
Every member sees each batch once per pass; the ensemble prediction is the mean of the
members' softmax probabilities, never of their logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.ensemble import metrics
from ft_dist.ensemble.corruptions import check_corruptions, corrupt
from ft_dist.ensemble.tickets import Layout, Ticket, build_member, check_compatible

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
    corruption: tuple[str, int] | None = None,
    device: torch.device | str = "cpu",
) -> Predictions:
    """Run every member on every batch, optionally corrupting the raw images first."""
    probs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for index, (images, labels) in enumerate(batches):
        images = images.to(device, torch.float32)
        if corruption is not None:
            images = corrupt(images, corruption[0], corruption[1], seed=index)
        inputs = normalize(images)
        probs.append(torch.stack([model(inputs).float().softmax(dim=1).cpu() for model in models]))
        targets.append(labels.cpu().long())
    if not probs:
        raise ValueError("the evaluation data yielded no batches")
    return Predictions(torch.cat(probs, dim=1), torch.cat(targets))


def _model_metrics(probs: torch.Tensor, targets: torch.Tensor, ood: torch.Tensor | None) -> dict:
    out: dict[str, Any] = {"test": metrics.classification_metrics(probs, targets)}
    if ood is not None:
        out["ood"] = {
            "auroc_max_prob": metrics.ood_auroc(probs, ood, "max_prob"),
            "auroc_entropy": metrics.ood_auroc(probs, ood, "entropy"),
        }
    return out


def score_predictions(test: Predictions, ood: Predictions | None = None) -> dict[str, Any]:
    """Metrics for each member and for the ensemble, plus prediction diversity."""
    num_members = test.member_probs.shape[0]
    members = [
        _model_metrics(
            test.member_probs[m], test.targets, None if ood is None else ood.member_probs[m]
        )
        for m in range(num_members)
    ]
    ensemble_ood = None if ood is None else metrics.ensemble_probs(ood.member_probs)
    ensemble = _model_metrics(metrics.ensemble_probs(test.member_probs), test.targets, ensemble_ood)
    disagreement = metrics.pairwise_disagreement(test.member_probs)
    kl = metrics.pairwise_kl(test.member_probs)
    diversity = {
        "disagreement": disagreement.tolist(),
        "kl": kl.tolist(),
        "mean_disagreement": metrics.off_diagonal_mean(disagreement),
        "mean_kl": metrics.off_diagonal_mean(kl),
    }
    return {"members": members, "ensemble": ensemble, "diversity": diversity}


def reliability(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, list[float]]:
    """The reliability-diagram data of one model, as JSON-able lists."""
    bins = metrics.reliability_bins(probs, targets)
    return {
        "edges": bins.edges.tolist(),
        "counts": bins.counts.tolist(),
        "confidence": bins.confidence.tolist(),
        "accuracy": bins.accuracy.tolist(),
    }


def corruption_metrics(
    models: Sequence[nn.Module],
    source: BatchSource,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    names: Sequence[str],
    severities: Sequence[int],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """{"members": [{name: {severity: metrics}}], "ensemble": {...}, "mean": {...}}."""
    check_corruptions(names, severities)
    members: list[dict[str, dict[str, dict]]] = [{} for _ in models]
    ensemble: dict[str, dict[str, dict]] = {}
    for name in names:
        for severity in severities:
            preds = predict(models, source(), normalize, (name, severity), device)
            for m, table in enumerate(members):
                row = metrics.classification_metrics(preds.member_probs[m], preds.targets)
                table.setdefault(name, {})[str(severity)] = row
            row = metrics.classification_metrics(
                metrics.ensemble_probs(preds.member_probs), preds.targets
            )
            ensemble.setdefault(name, {})[str(severity)] = row
    return {
        "members": members,
        "ensemble": ensemble,
        "mean": {
            "members": [_mean_over_corruptions(table) for table in members],
            "ensemble": _mean_over_corruptions(ensemble),
        },
    }


def _mean_over_corruptions(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    rows = [row for by_severity in table.values() for row in by_severity.values()]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


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
    ood_source: BatchSource | None = None,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The full report dict (see ft_dist.ensemble.report) for one ensemble of tickets."""
    tickets = list(tickets)
    check_compatible(tickets)
    models = [build_member(ticket, device) for ticket in tickets]
    test = predict(models, test_source(), normalize, device=device)
    ood = None if ood_source is None else predict(models, ood_source(), normalize, device=device)
    report: dict[str, Any] = {
        "run_dir": str(run_root),
        "layout": layout,
        "num_members": len(tickets),
        "num_test_samples": int(test.targets.numel()),
        "num_ood_samples": None if ood is None else int(ood.targets.numel()),
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
        report["corruptions"] = corruption_metrics(
            models, test_source, normalize, corruptions, severities, device
        )
    return report
