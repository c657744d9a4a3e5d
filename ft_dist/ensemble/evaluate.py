"""Evaluate an ensemble of tickets: member and ensemble metrics, OoD, corruptions, diversity.

The data arrives as an iterable of `(images, labels)` batches of *raw* float images in
[0, 1] (before normalisation), so a corruption can act on the image itself; the training
normalisation is applied afterwards, to in-distribution and OoD inputs alike (SPEC §7).
Every member sees each batch once per pass; the ensemble prediction is the mean of the
members' softmax probabilities, never of their logits.
"""

from __future__ import annotations

import itertools
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
    member_log_probs,
    synthetic_benchmark,
)
from ft_dist.ensemble.tickets import Layout, Ticket, build_member, check_compatible

__all__ = ["Batches", "BatchSource", "Normalization", "evaluate_tickets", "predict"]


@dataclass(frozen=True)
class Predictions:
    """Every member's log-probabilities (log-softmax) on one pass over a dataset.

    Log-probabilities, not probabilities, so that temperature scaling sees the members'
    logits up to a per-input constant, without the 0s of a saturated float32 softmax.
    """

    member_log_probs: torch.Tensor  # [M, N, K] float32
    targets: torch.Tensor  # [N]
    forward_seconds: float = 0.0  # time spent in the members' forward passes

    @property
    def member_probs(self) -> torch.Tensor:
        """[M, N, K] softmax probabilities."""
        return self.member_log_probs.exp()


@torch.no_grad()
def predict(
    models: Sequence[nn.Module],
    batches: Batches,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> Predictions:
    """Run every member on every batch of raw images, normalised first."""
    log_probs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    seconds = 0.0
    for batch_log_probs, batch_targets, batch_seconds in member_log_probs(
        models, batches, normalize, device
    ):
        log_probs.append(batch_log_probs)
        targets.append(batch_targets)
        seconds += batch_seconds
    if not log_probs:
        raise ValueError("the evaluation data yielded no batches")
    return Predictions(torch.cat(log_probs, dim=1), torch.cat(targets), seconds)


OOD_SCORES: tuple[metrics.OodScore, ...] = ("max_prob", "entropy")


def _ood_metrics(log_probs: torch.Tensor, ood_log_probs: torch.Tensor) -> dict[str, float]:
    """auroc / aupr_in / aupr_out / fpr95, each by max-prob and by entropy, scored from the
    log-probabilities in float64 (a float32 softmax saturates at 1 for confident inputs)."""
    out: dict[str, float] = {}
    for score in OOD_SCORES:
        figures = metrics.ood_detection_from_log_probs(log_probs, ood_log_probs, score)
        for key, value in figures.items():
            out[f"{key}_{score}"] = value
    return out


def _model_log_probs(member_log_probs: torch.Tensor) -> list[torch.Tensor]:
    """[each member's log p, then the log of the ensemble's mean probability]."""
    return [*member_log_probs, metrics.ensemble_log_probs(member_log_probs)]


def fit_temperatures(val: Predictions) -> list[float]:
    """Temperatures of every member, then of the ensemble, fitted on validation data."""
    return [
        metrics.fit_temperature(log_probs, val.targets)
        for log_probs in _model_log_probs(val.member_log_probs)
    ]


def score_predictions(
    test: Predictions,
    ood_sets: Mapping[str, Predictions] | None = None,
    *,
    temperatures: Sequence[float] | None = None,
    num_bins: int = metrics.NUM_ECE_BINS,
) -> dict[str, Any]:
    """Metrics for each member and for the ensemble, plus prediction diversity.

    Each row's ``ood`` holds the first OoD set's figures; ``ood_sets`` holds every set's.
    With ``temperatures`` (members, then the ensemble: `fit_temperatures` on the
    validation split) each row also has ``calibrated``: the temperature and the metrics of
    softmax(log p / T), the ensemble's log p being the log of its mean probability.
    """
    ood_sets = dict(ood_sets or {})
    rows: list[dict[str, Any]] = []
    member_probs = test.member_probs
    all_log_probs = _model_log_probs(test.member_log_probs)
    ood_log_probs = {name: _model_log_probs(ood.member_log_probs) for name, ood in ood_sets.items()}
    for index, log_probs in enumerate(all_log_probs):
        probs = log_probs.exp()
        row: dict[str, Any] = {
            "test": metrics.classification_metrics(probs, test.targets, num_bins)
        }
        if temperatures is not None:
            row["calibrated"] = metrics.calibrated_metrics(
                log_probs, test.targets, temperatures[index], num_bins
            )
        for name, other in ood_log_probs.items():
            row.setdefault("ood_sets", {})[name] = _ood_metrics(log_probs, other[index])
        if ood_sets:
            row["ood"] = next(iter(row["ood_sets"].values()))
        rows.append(row)
    disagreement = metrics.pairwise_disagreement(member_probs)
    kl = metrics.pairwise_kl(member_probs)
    diversity = {
        "disagreement": disagreement.tolist(),
        "kl": kl.tolist(),
        "mean_disagreement": metrics.off_diagonal_mean(disagreement),
        "mean_kl": metrics.off_diagonal_mean(kl),
    }
    return {"members": rows[:-1], "ensemble": rows[-1], "diversity": diversity}


MAX_SUBSETS = 20  # per ensemble size; more than this many subsets: a seeded random sample


def _subsets(members: int, size: int, seed: int = 0) -> list[tuple[int, ...]]:
    every = list(itertools.combinations(range(members), size))
    if len(every) <= MAX_SUBSETS:
        return every
    generator = torch.Generator().manual_seed(seed * 1000 + size)
    chosen = torch.randperm(len(every), generator=generator)[:MAX_SUBSETS].sort().values
    return [every[i] for i in chosen.tolist()]


def ensemble_size_curve(
    test: Predictions,
    val: Predictions | None = None,
    num_bins: int = metrics.NUM_ECE_BINS,
) -> list[dict[str, Any]]:
    """Metrics of sub-ensembles of 1..M members, averaged over member subsets of each size.

    Every subset's ensemble is the mean of its members' probabilities; with ``val`` its
    temperature is fitted on the validation split (Ashukha et al. 2020 average over random
    subsets the same way). These curves give the deep-ensemble equivalent (DEE) when the
    members are dense (`metrics.deep_ensemble_equivalent`).
    """
    members = test.member_log_probs.shape[0]
    curve = []
    for size in range(1, members + 1):
        subsets = _subsets(members, size)
        sums: dict[str, float] = {}
        for subset in subsets:
            index = list(subset)
            log_probs = metrics.ensemble_log_probs(test.member_log_probs[index])
            row = metrics.classification_metrics(log_probs.exp(), test.targets, num_bins)
            if val is not None:
                val_log_probs = metrics.ensemble_log_probs(val.member_log_probs[index])
                temperature = metrics.fit_temperature(val_log_probs, val.targets)
                calibrated = metrics.calibrated_metrics(
                    log_probs, test.targets, temperature, num_bins
                )
                row.update({f"calibrated_{key}": value for key, value in calibrated.items()})
            for key, value in row.items():
                sums[key] = sums.get(key, 0.0) + value
        averaged = {key: value / len(subsets) for key, value in sums.items()}
        curve.append({"size": size, "subsets": len(subsets), **averaged})
    return curve


def reliability(
    probs: torch.Tensor, targets: torch.Tensor, num_bins: int = metrics.NUM_ECE_BINS
) -> dict[str, list[float]]:
    """The reliability-diagram data of one model, as JSON-able lists."""
    bins = metrics.reliability_bins(probs, targets, num_bins)
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
    from ft_dist.models import model_config_from_meta
    from ft_dist.sparse.flops import model_forward_flops

    sparse_total = 0.0
    dense = 0.0
    for ticket in tickets:
        model = model_config_from_meta(ticket.meta, str(ticket.path))
        dense, sparse = model_forward_flops(model, ticket.full_densities())
        sparse_total += sparse
    train = [ticket.meta.get("train_flops") for ticket in tickets]
    known = [float(value) for value in train if value is not None]
    # EDST tickets carry the run's cumulative FLOPs; DST Ensemble members are separate runs.
    ensemble_train = (sum(known) if layout == "experiment" else max(known)) if known else None
    return {
        "dense_forward_flops": float(dense),
        "inference_flops": sparse_total,
        "inference_flops_relative_to_dense": sparse_total / dense if dense else None,
        "train_flops": ensemble_train,
    }


def _parameters(models: Sequence[nn.Module], tickets: Sequence[Ticket]) -> dict[str, Any]:
    """Parameters of one dense member (the full architecture, before any channel cut), and
    the active (non-masked-off) ones per member."""
    dense = sum(tickets[0].full_sizes().values())
    active = [
        sum(int(p.numel()) for p in model.parameters())
        - sum(int(mask.numel() - mask.sum()) for mask in ticket.masks.values())
        for model, ticket in zip(models, tickets, strict=True)
    ]
    return {"dense_parameters": dense, "active_parameters": active}


def _cost(
    models: Sequence[nn.Module],
    tickets: Sequence[Ticket],
    test: Predictions,
    device: torch.device | str,
) -> dict[str, Any]:
    """The cost side of the report: parameters and measured inference throughput."""
    params = _parameters(models, tickets)
    images = int(test.targets.numel())
    seconds = test.forward_seconds
    return {
        **params,
        "ensemble_active_parameters": sum(params["active_parameters"]),
        "ensemble_parameters_vs_dense": sum(params["active_parameters"])
        / params["dense_parameters"],
        "inference_images_per_s": images / seconds if seconds > 0 else None,
        "inference_device": str(device),
        "inference_note": "test split, every member's forward pass (masked dense weights, "
        "eval batch size), data loading excluded",
    }


def evaluate_tickets(
    tickets: Sequence[Ticket],
    layout: Layout,
    run_root: Path,
    test_source: BatchSource,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    val_source: BatchSource | None = None,
    ood_sources: Mapping[str, BatchSource] | None = None,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (),
    benchmark: CorruptionBenchmark | None = None,
    num_bins: int = metrics.NUM_ECE_BINS,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The full report dict (see ft_dist.ensemble.report) for one ensemble of tickets.

    ``val_source`` (the validation split) fits a temperature per member and for the
    ensemble; every test and corruption table then has calibrated figures beside the raw
    ones. ``corruptions`` x ``severities`` of the built-in corruptions are applied to the
    test data; ``benchmark`` evaluates prepared cells instead (CIFAR-C / ImageNet-C files).
    ``num_bins``: ECE bins (15; `metrics.OFFICIAL_ECE_BINS` = the official code's 14).
    """
    if corruptions and benchmark is not None:
        raise ValueError("give built-in corruption names or a benchmark of files, not both")
    tickets = list(tickets)
    check_compatible(tickets)
    models = [build_member(ticket, device) for ticket in tickets]
    test = predict(models, test_source(), normalize, device=device)
    val = predict(models, val_source(), normalize, device) if val_source is not None else None
    temperatures = fit_temperatures(val) if val is not None else None
    ood = {
        name: predict(models, src(), normalize, device) for name, src in (ood_sources or {}).items()
    }
    counts = {name: int(preds.targets.numel()) for name, preds in ood.items()}
    report: dict[str, Any] = {
        "run_dir": str(run_root),
        "layout": layout,
        "num_members": len(tickets),
        "num_test_samples": int(test.targets.numel()),
        "num_val_samples": int(val.targets.numel()) if val is not None else None,
        "num_ood_samples": next(iter(counts.values()), None),
        "ood_samples": counts,
        "ece_bins": num_bins,
    }
    report.update(score_predictions(test, ood, temperatures=temperatures, num_bins=num_bins))
    names = member_names(len(tickets))
    for member, name, ticket in zip(report["members"], names, tickets, strict=True):
        member.update(_member_info(name, ticket, run_root))
    report["ensemble"]["name"] = "ensemble"
    jaccard = metrics.pairwise_mask_jaccard([ticket.masks for ticket in tickets])
    report["diversity"]["mask_jaccard"] = jaccard.tolist()
    report["diversity"]["mean_mask_jaccard"] = metrics.off_diagonal_mean(jaccard)
    member_probs = test.member_probs
    report["reliability"] = {
        name: reliability(member_probs[m], test.targets, num_bins) for m, name in enumerate(names)
    }
    report["reliability"]["ensemble"] = reliability(
        metrics.ensemble_probs(member_probs), test.targets, num_bins
    )
    report["ensemble_sizes"] = ensemble_size_curve(test, val, num_bins)
    report["flops"] = _flops(tickets, layout)
    report["cost"] = _cost(models, tickets, test, device)
    if corruptions:
        benchmark = synthetic_benchmark(test_source, corruptions, severities, device)
    if benchmark is not None:
        report["corruptions"] = corruption_metrics(
            models, benchmark, normalize, device, temperatures=temperatures, num_bins=num_bins
        )
    return report
