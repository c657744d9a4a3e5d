"""Metrics on hand-made tensors with known answers, and agreement with torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional import kl_divergence
from torchmetrics.functional.classification import multiclass_calibration_error

from ft_dist.ensemble import metrics


def _binary(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class predictions of class 0 with the given confidences; target 0 if correct."""
    conf = torch.tensor(confidences, dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], dim=1)
    targets = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, targets


def test_perfectly_calibrated_has_zero_ece() -> None:
    probs_a, targets_a = _binary([0.7] * 10, [True] * 7 + [False] * 3)
    probs_b, targets_b = _binary([0.9] * 10, [True] * 9 + [False])
    probs = torch.cat([probs_a, probs_b])
    targets = torch.cat([targets_a, targets_b])
    assert metrics.ece(probs, targets) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_ece_and_bins() -> None:
    probs, targets = _binary([0.9] * 4 + [0.6] * 4, [True, True, False, False] * 2)
    # Bin of 0.9: accuracy 0.5 -> gap 0.4; bin of 0.6: accuracy 0.5 -> gap 0.1; equal weights.
    assert metrics.ece(probs, targets) == pytest.approx(0.25)
    bins = metrics.reliability_bins(probs, targets)
    assert int(bins.counts.sum()) == 8 and int((bins.counts > 0).sum()) == 2
    # 0.9 lies in (13/15, 14/15], 0.6 in (8/15, 9/15] -> bins 13 and 8.
    assert bins.counts[13] == 4 and bins.counts[8] == 4
    assert bins.confidence[13] == pytest.approx(0.9) and bins.accuracy[13] == pytest.approx(0.5)


def test_bin_edges_are_right_closed() -> None:
    probs, targets = _binary([1.0, 2 / 3 + 1e-12, 2 / 3], [True, True, True])
    bins = metrics.reliability_bins(probs, targets)
    assert bins.counts[14] == 1  # confidence 1.0 joins the top bin, not a bin of its own
    assert bins.counts[10] == 1 and bins.counts[9] == 1


def test_ece_agrees_with_torchmetrics_off_edges() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=generator) * 3
    probs = logits.softmax(dim=1)
    targets = torch.randint(0, 10, (2000,), generator=generator)
    ours = metrics.ece(probs, targets)
    theirs = float(multiclass_calibration_error(probs, targets, num_classes=10, n_bins=15))
    assert ours > 0.05
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_nll_known_values() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25]])
    assert metrics.nll(probs, torch.tensor([0, 0])) == pytest.approx(
        (math.log(2) + math.log(4)) / 2
    )
    uniform = torch.full((3, 7), 1 / 7)
    assert metrics.nll(uniform, torch.tensor([0, 3, 6])) == pytest.approx(math.log(7))
    # A zero probability on the target is clamped, not infinite.
    assert math.isfinite(metrics.nll(probs, torch.tensor([2, 2])))


def test_brier_known_values() -> None:
    eye = torch.eye(4)
    assert metrics.brier(eye, torch.arange(4)) == 0.0
    assert metrics.brier(eye, torch.tensor([1, 2, 3, 0])) == pytest.approx(2.0)
    assert metrics.brier(torch.full((2, 4), 0.25), torch.tensor([0, 1])) == pytest.approx(0.75)


def test_accuracy_and_table() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    table = metrics.classification_metrics(probs, torch.tensor([0, 1, 1, 1]))
    assert table["accuracy"] == pytest.approx(0.75)
    assert set(table) == {"accuracy", "nll", "ece", "brier"}


def test_auroc_separated_and_mann_whitney() -> None:
    confident = torch.tensor([[0.95, 0.05], [0.9, 0.1]])
    unsure = torch.tensor([[0.55, 0.45], [0.5, 0.5], [0.6, 0.4]])
    for score in ("max_prob", "entropy"):
        assert metrics.ood_auroc(confident, unsure, score) == pytest.approx(1.0)
        assert metrics.ood_auroc(unsure, confident, score) == pytest.approx(0.0)
    generator = torch.Generator().manual_seed(1)
    in_probs = (torch.randn(300, 5, generator=generator) * 2).softmax(1)
    ood_probs = torch.randn(200, 5, generator=generator).softmax(1)
    for score in ("max_prob", "entropy"):
        s_in = metrics.ood_scores(in_probs, score)
        s_ood = metrics.ood_scores(ood_probs, score)
        pairs = (s_in[:, None] > s_ood[None, :]).double() + 0.5 * (s_in[:, None] == s_ood[None, :])
        expected = float(pairs.mean())
        assert 0.5 < expected < 1.0
        assert metrics.ood_auroc(in_probs, ood_probs, score) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="score"):
        metrics.ood_scores(in_probs, "logit")  # type: ignore[arg-type]


def test_entropy_known() -> None:
    ent = metrics.entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert ent.tolist() == pytest.approx([0.0, math.log(2)])


def test_disagreement_and_ensemble_mean() -> None:
    a = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    b = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    c = a.clone()
    stacked = torch.stack([a, b, c])
    dis = metrics.pairwise_disagreement(stacked)
    assert dis[0, 1] == pytest.approx(0.5) and dis[0, 2] == 0.0 and dis[1, 2] == pytest.approx(0.5)
    assert torch.equal(dis, dis.T) and dis.diagonal().abs().sum() == 0
    assert metrics.off_diagonal_mean(dis) == pytest.approx(1 / 3)
    assert torch.allclose(metrics.ensemble_probs(stacked), (a + b + c).double() / 3)


def test_pairwise_kl_known_and_torchmetrics() -> None:
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[0.25, 0.75]])
    kl = metrics.pairwise_kl(torch.stack([p, q, p]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl[0, 1] == pytest.approx(expected)
    assert kl[0, 2] == pytest.approx(0.0, abs=1e-12) and kl[1, 0] != pytest.approx(expected)
    generator = torch.Generator().manual_seed(2)
    members = torch.randn(3, 50, 6, generator=generator).softmax(2).double()
    ours = metrics.pairwise_kl(members)
    theirs = kl_divergence(members[0], members[2], log_prob=False, reduction="mean")
    assert ours[0, 2] == pytest.approx(float(theirs), rel=1e-6)


def test_mask_jaccard() -> None:
    a = {"w": torch.tensor([True, True, False, False]), "v": torch.tensor([[True, False]])}
    b = {"w": torch.tensor([True, False, True, False]), "v": torch.tensor([[True, False]])}
    # intersection: w 1 + v 1 = 2; union: w 3 + v 1 = 4
    assert metrics.mask_jaccard(a, b) == pytest.approx(0.5)
    matrix = metrics.pairwise_mask_jaccard([a, b, a])
    assert matrix[0, 2] == 1.0 and matrix[1, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different layers"):
        metrics.mask_jaccard(a, {"w": a["w"]})


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        metrics.nll(torch.ones(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        metrics.nll(torch.ones(3, 2) / 2, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[M, N, K\]"):
        metrics.pairwise_kl(torch.ones(3, 2))
