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
        assert metrics.ood_detection(confident, unsure, score)["auroc"] == pytest.approx(1.0)
        assert metrics.ood_detection(unsure, confident, score)["auroc"] == pytest.approx(0.0)
    generator = torch.Generator().manual_seed(1)
    in_probs = (torch.randn(300, 5, generator=generator) * 2).softmax(1)
    ood_probs = torch.randn(200, 5, generator=generator).softmax(1)
    for score in ("max_prob", "entropy"):
        s_in = metrics.ood_scores(in_probs, score)
        s_ood = metrics.ood_scores(ood_probs, score)
        pairs = (s_in[:, None] > s_ood[None, :]).double() + 0.5 * (s_in[:, None] == s_ood[None, :])
        expected = float(pairs.mean())
        assert 0.5 < expected < 1.0
        assert metrics.ood_detection(in_probs, ood_probs, score)["auroc"] == pytest.approx(
            expected, abs=1e-6
        )
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


# --- calibration, OoD detection and the deep-ensemble equivalent (hand-computed cases) ---


def _top_class_log_probs(logit: float, correct: int, total: int, classes: int):
    """Logits [a, 0, ..., 0] for every input; the first `correct` inputs are class 0."""
    logits = torch.zeros(total, classes, dtype=torch.float64)
    logits[:, 0] = logit
    targets = torch.tensor([0] * correct + [1 + i % (classes - 1) for i in range(total - correct)])
    return logits.log_softmax(dim=1), targets


def test_temperature_closed_form_binary_and_multiclass() -> None:
    # NLL(β) = -q β a + log(e^{βa} + K - 1) is minimal where p_top = q:
    # β* = log(q (K - 1) / (1 - q)) / a, T* = 1 / β*.
    for logit, q, classes in ((2.0, 0.8, 2), (5.0, 0.7, 10), (0.5, 0.9, 4)):
        log_probs, targets = _top_class_log_probs(logit, round(q * 100), 100, classes)
        expected = logit / math.log(q * (classes - 1) / (1 - q))
        assert metrics.fit_temperature(log_probs, targets) == pytest.approx(expected, rel=1e-9)
    # 2 classes, a = 2, q = 0.8: T = 2 / log 4 and the calibrated top probability is 0.8.
    log_probs, targets = _top_class_log_probs(2.0, 80, 100, 2)
    temperature = metrics.fit_temperature(log_probs, targets)
    assert temperature == pytest.approx(2 / math.log(4))
    calibrated = metrics.temperature_scale(log_probs, temperature)
    assert calibrated[:, 0].tolist() == pytest.approx([0.8] * 100)
    table = metrics.calibrated_metrics(log_probs, targets, temperature)
    assert table["temperature"] == temperature and table["accuracy"] == pytest.approx(0.8)
    assert table["nll"] == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))
    assert table["ece"] == pytest.approx(0.0, abs=1e-12)  # one bin, confidence 0.8 = accuracy


def test_temperature_bounds_identity_and_ensemble_log() -> None:
    log_probs, targets = _top_class_log_probs(3.0, 100, 100, 3)  # always right: T -> 0
    assert metrics.fit_temperature(log_probs, targets, bounds=(0.05, 20.0)) == 0.05
    log_probs, targets = _top_class_log_probs(3.0, 0, 100, 3)  # always wrong: T -> inf
    assert metrics.fit_temperature(log_probs, targets, bounds=(0.05, 20.0)) == 20.0
    with pytest.raises(ValueError, match="bounds"):
        metrics.fit_temperature(log_probs, targets, bounds=(1.0, 1.0))
    # T = 1 changes nothing.
    probs, targets = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]]), torch.tensor([0, 2])
    same = metrics.calibrated_metrics(probs.to(torch.float64).log(), targets, 1.0)
    assert {k: v for k, v in same.items() if k != "temperature"} == pytest.approx(
        metrics.classification_metrics(probs, targets)
    )
    # The ensemble's log-probability is the log of the members' mean probability.
    a = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    b = torch.tensor([[0.1, 0.9], [0.3, 0.7]])
    joint = metrics.ensemble_log_probs(torch.stack([a.log(), b.log()]))
    assert joint.exp().tolist() == [pytest.approx([0.3, 0.7]), pytest.approx([0.6, 0.4])]


def _max_prob_rows(top: list[float], classes: int = 4) -> torch.Tensor:
    """Rows [p, (1-p)/3, (1-p)/3, (1-p)/3]: max-prob p, entropy decreasing in p."""
    top_t = torch.tensor(top, dtype=torch.float64)
    rest = ((1 - top_t) / (classes - 1)).unsqueeze(1).expand(-1, classes - 1)
    return torch.cat([top_t.unsqueeze(1), rest], dim=1)


def test_ood_detection_hand_computed() -> None:
    # Ranked by score: in .9, ood .85, in .8, in .7, ood .6, in .5, ood .4, ood .3
    in_probs = _max_prob_rows([0.9, 0.8, 0.7, 0.5])
    ood_probs = _max_prob_rows([0.85, 0.6, 0.4, 0.3])
    for score in ("max_prob", "entropy"):
        figures = metrics.ood_detection(in_probs, ood_probs, score)
        # AUROC: pairs (in > ood) = 4 + 3 + 3 + 2 = 12 of 16.
        assert figures["auroc"] == pytest.approx(12 / 16)
        # AUPR-in: in-distribution hits at ranks 1, 3, 4, 6 -> precisions 1, 2/3, 3/4, 4/6.
        assert figures["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)
        # AUPR-out: ranked by -score, OoD hits at ranks 1, 2, 4, 7 -> 1, 1, 3/4, 4/7.
        assert figures["aupr_out"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
        # FPR95: keeping >= 95 % of 4 test inputs keeps all (threshold 0.5): OoD .85, .6 pass.
        assert figures["fpr95"] == pytest.approx(0.5)


def test_fpr_at_95_tpr_threshold_on_the_boundary() -> None:
    # 20 positives 0.05 .. 1.0: TPR 19/20 = 0.95 exactly at threshold 0.10.
    positives = torch.arange(1, 21, dtype=torch.float64) / 20
    negatives = torch.tensor([0.075, 0.12, 0.5, 0.99], dtype=torch.float64)
    scores = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones(20), torch.zeros(4)]).long()
    assert metrics.fpr_at_tpr(scores, labels, 0.95) == pytest.approx(3 / 4)
    assert metrics.fpr_at_tpr(scores, labels, 1.0) == pytest.approx(1.0)  # t = 0.05: all pass
    assert metrics.fpr_at_tpr(scores, labels, 0.5) == pytest.approx(1 / 4)  # t = 0.55: 0.99


def test_official_ece_binning_is_14_right_closed_bins() -> None:
    # The official code: b = linspace(0, 1, 15); bins = digitize(conf, b, right=True); sum
    # over bins of |sum(correct - conf)| / N. Transcribed here in numpy as the reference.
    import numpy as np

    def official(conf: np.ndarray, correct: np.ndarray) -> float:
        bins = np.digitize(conf, bins=np.linspace(0, 1.0, 15), right=True)
        return sum(
            abs(float(np.sum(correct[bins == b] - conf[bins == b]))) for b in range(15)
        ) / len(conf)

    generator = torch.Generator().manual_seed(3)
    probs = (torch.randn(3000, 10, generator=generator) * 2.5).softmax(1).double()
    # Labels drawn from the predictions (near-calibrated): gaps of both signs across bins.
    targets = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    conf, predicted = probs.max(1)
    correct = (predicted == targets).double()
    expected = official(conf.numpy(), correct.numpy())
    assert metrics.ece(probs, targets, metrics.OFFICIAL_ECE_BINS) == pytest.approx(expected)
    assert metrics.ece(probs, targets) != pytest.approx(expected, abs=1e-6)  # 15 bins differ
    # Hand case: 14 bins put 0.5 in (6/14, 7/14] and 0.53 in (7/14, 8/14]; 15 bins put
    # both in (7/15, 8/15]. Correct at 0.5, wrong at 0.53.
    probs2, targets2 = _binary([0.5, 0.53], [True, False])
    assert metrics.ece(probs2, targets2, 14) == pytest.approx((0.5 + 0.53) / 2)
    assert metrics.ece(probs2, targets2, 15) == pytest.approx(abs(0.5 - (0.5 + 0.53) / 2))


def test_deep_ensemble_equivalent_interpolates() -> None:
    curve = [1.0, 0.8, 0.7]  # calibrated NLL of 1, 2, 3 dense members
    assert metrics.deep_ensemble_equivalent(0.9, curve) == (pytest.approx(1.5), None)
    assert metrics.deep_ensemble_equivalent(0.75, curve) == (pytest.approx(2.5), None)
    assert metrics.deep_ensemble_equivalent(0.7, curve) == (pytest.approx(3.0), None)
    assert metrics.deep_ensemble_equivalent(1.2, curve) == (1.0, "≤1")
    assert metrics.deep_ensemble_equivalent(0.6, curve) == (3.0, ">3")
    # A non-monotone curve: the first crossing counts (min l).
    assert metrics.deep_ensemble_equivalent(0.85, [1.0, 0.8, 0.9, 0.7])[0] == pytest.approx(1.75)
    with pytest.raises(ValueError):
        metrics.deep_ensemble_equivalent(0.5, [])
