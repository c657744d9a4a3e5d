"""Corruption figures: streamed sums equal the batch metrics; pooled = one concatenated set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.ensemble import metrics
from ft_dist.ensemble.corruptions import corrupt
from ft_dist.ensemble.data import gaussian_noise_data
from ft_dist.ensemble.evaluate import Normalization, predict
from ft_dist.ensemble.robustness import (
    CorruptionBenchmark,
    CorruptionCell,
    corruption_metrics,
    synthetic_benchmark,
)
from ft_dist.ensemble.tickets import build_member, find_tickets, load_ticket
from tests.ensemble.conftest import image_batches

NORM = Normalization(mean=(0.5,), std=(0.25,))


def random_probs(count: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator) * 3
    return logits.softmax(1), torch.randint(0, classes, (count,), generator=generator)


def test_streamed_sums_equal_the_batch_metrics() -> None:
    probs, targets = random_probs(500, 7, seed=0)
    # Confidences on bin edges and exactly 1.0 must land in the same bins as in `ece`.
    probs[:3] = torch.tensor(
        [[1.0] + [0.0] * 6, [0.6, 0.4] + [0.0] * 5, [0.4, 0.3, 0.3] + [0.0] * 4]
    )
    sums = metrics.MetricSums()
    for chunk_probs, chunk_targets in zip(probs.split(64), targets.split(64), strict=True):
        sums.add_(chunk_probs, chunk_targets)
    expected = metrics.classification_metrics(probs, targets)
    assert sums.result() == pytest.approx(expected, rel=1e-6)  # torchmetrics: float32
    other = metrics.MetricSums().add_(*random_probs(80, 7, seed=1))
    merged = metrics.MetricSums().merge_(sums).merge_(other)
    both = random_probs(80, 7, seed=1)
    pooled = metrics.classification_metrics(
        torch.cat([probs, both[0]]), torch.cat([targets, both[1]])
    )
    assert merged.result() == pytest.approx(pooled, rel=1e-6)
    with pytest.raises(ValueError, match="no predictions"):
        metrics.MetricSums().result()


def _models(run_dir: Path) -> list[torch.nn.Module]:
    return [build_member(load_ticket(path)) for path in find_tickets(run_dir)[0]]


def test_pooled_figures_are_metrics_of_all_cells_concatenated(run_dir: Path) -> None:
    models = _models(run_dir)
    data = {
        ("fog", 1): image_batches(10, 4, seed=1),
        ("fog", 5): image_batches(7, 4, seed=2),
        ("snow", 3): image_batches(12, 5, seed=3),
    }
    cells = tuple(CorruptionCell(n, s, lambda b=batches: b) for (n, s), batches in data.items())
    result = corruption_metrics(models, CorruptionBenchmark("test", cells), NORM)
    preds = {key: predict(models, batches, NORM) for key, batches in data.items()}
    member_probs = torch.cat([p.member_probs for p in preds.values()], dim=1)
    targets = torch.cat([p.targets for p in preds.values()])
    assert result["pooled"]["num_samples"] == 29
    ensemble = metrics.ensemble_probs(member_probs)
    expected = metrics.classification_metrics(ensemble, targets)
    assert result["pooled"]["ensemble"] == pytest.approx(expected, rel=1e-6)
    for m, row in enumerate(result["pooled"]["members"]):
        assert row == pytest.approx(metrics.classification_metrics(member_probs[m], targets))
    fog5 = metrics.classification_metrics(metrics.ensemble_probs(preds["fog", 5].member_probs),
                                          preds["fog", 5].targets)  # fmt: skip
    assert result["ensemble"]["fog"]["5"] == pytest.approx(fog5, rel=1e-6)
    cells_accuracy = [row["accuracy"] for by in result["ensemble"].values() for row in by.values()]
    mean = result["mean"]["ensemble"]["accuracy"]
    assert mean == pytest.approx(sum(cells_accuracy) / 3)
    assert result["severities"] == [1, 3, 5] and result["source"] == "test"


def test_synthetic_cells_corrupt_each_batch_with_its_seed() -> None:
    batches = image_batches(9, 4, seed=5)
    bench = synthetic_benchmark(lambda: batches, ["gaussian_noise", "contrast"], [2])
    assert [(c.name, c.severity) for c in bench.cells] == [("gaussian_noise", 2), ("contrast", 2)]
    got = list(bench.cells[0].source())
    for index, ((images, labels), (noisy, same)) in enumerate(zip(batches, got, strict=True)):
        assert torch.equal(noisy, corrupt(images, "gaussian_noise", 2, seed=index))
        assert torch.equal(labels, same)
    with pytest.raises(ValueError, match="choose from"):
        synthetic_benchmark(lambda: batches, ["fog"], [1])


def test_gaussian_noise_ood_set_is_the_papers() -> None:
    data = gaussian_noise_data(1000, (3, 8, 8), NORM, batch_size=300, seed=0)
    images, labels = zip(*data.source(), strict=True)
    images = torch.cat(images)
    assert images.shape == (1000, 3, 8, 8) and [len(b) for b in labels] == [300, 300, 300, 100]
    assert bool((torch.cat(labels) == -1).all())
    assert images.min() >= 0.0 and images.max() <= 1.0 and (images == 1.0).any()
    assert images.mean() == pytest.approx(0.5, abs=0.01)
    assert images.std() == pytest.approx(0.235, abs=0.01)  # 0.25 before clipping at 2 sigma
    assert torch.equal(images, torch.cat([b for b, _ in data.source()]))  # seeded
    with pytest.raises(ValueError, match=">= 1 sample"):
        gaussian_noise_data(0, (1, 4, 4), NORM)


def test_mean_is_uncertainty_baselines_order_and_calibrated_cells(run_dir: Path) -> None:
    """cA/cNLL/cECE: per severity the mean over corruptions, then over severities; the
    calibrated tables are the metrics of softmax(log p / T) with the given temperatures."""
    models = _models(run_dir)
    data = {
        ("fog", 1): image_batches(10, 4, seed=1),
        ("snow", 1): image_batches(8, 4, seed=2),
        ("fog", 2): image_batches(6, 4, seed=3),
    }
    cells = tuple(CorruptionCell(n, s, lambda b=batches: b) for (n, s), batches in data.items())
    temperatures = [0.5, 1.0, 2.0, 1.5]  # three members, then the ensemble
    result = corruption_metrics(
        models, CorruptionBenchmark("test", cells), NORM, temperatures=temperatures
    )
    table = result["ensemble"]
    fog1, snow1, fog2 = table["fog"]["1"], table["snow"]["1"], table["fog"]["2"]
    for key in ("accuracy", "nll", "ece"):
        severity_1 = (fog1[key] + snow1[key]) / 2
        assert result["by_severity"]["ensemble"]["1"][key] == pytest.approx(severity_1)
        assert result["mean"]["ensemble"][key] == pytest.approx((severity_1 + fog2[key]) / 2)
    calibrated = result["calibrated"]
    assert calibrated["temperatures"] == temperatures
    preds = predict(models, data["snow", 1], NORM)
    log_probs = metrics.ensemble_log_probs(preds.member_log_probs)
    expected = metrics.classification_metrics(
        metrics.temperature_scale(log_probs, 1.5), preds.targets
    )
    assert calibrated["ensemble"]["snow"]["1"] == pytest.approx(expected, rel=1e-6)
    member_2 = metrics.classification_metrics(
        metrics.temperature_scale(preds.member_log_probs[1], 1.0), preds.targets
    )
    assert calibrated["members"][1]["snow"]["1"] == pytest.approx(member_2, rel=1e-6)
    assert calibrated["pooled"]["num_samples"] == 24
    # Accuracy does not depend on a temperature.
    assert calibrated["mean"]["ensemble"]["accuracy"] == pytest.approx(
        result["mean"]["ensemble"]["accuracy"]
    )
    assert "calibrated" not in corruption_metrics(models, CorruptionBenchmark("t", cells), NORM)
