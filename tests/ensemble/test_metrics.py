"""Metrics on hand-made tensors with known answers, and agreement with torchmetrics and
scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
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


# --- OoD figures against scikit-learn: exact ranking in float64, ties counted as ties -----


def _sklearn_figures(scores: np.ndarray, labels: np.ndarray, tpr: float = 0.95) -> dict:
    """scikit-learn's figures, label 1 positive; FPR at the first ROC point (no point
    dropped, no interpolation) whose TPR reaches `tpr`."""
    fpr_curve, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(labels, scores),
        "aupr_in": average_precision_score(labels, scores),
        "aupr_out": average_precision_score(1 - labels, -scores),
        "fpr95": float(fpr_curve[np.searchsorted(tpr_curve, tpr, side="left")]),
    }


def _ours(scores: np.ndarray, labels: np.ndarray, tpr: float = 0.95) -> dict:
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    return {
        "auroc": metrics.auroc(s, y),
        "aupr_in": metrics.average_precision(s, y),
        "aupr_out": metrics.average_precision(-s, 1 - y),
        "fpr95": metrics.fpr_at_tpr(s, y, tpr),
    }


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_match_sklearn_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positives, negatives = rng.integers(1, 300, size=2)
    labels = np.r_[np.ones(positives, dtype=np.int64), np.zeros(negatives, dtype=np.int64)]
    scores = rng.normal(size=len(labels)) + labels * rng.uniform(0, 2)
    if seed % 2:  # many ties, within and across the classes
        scores = np.round(scores, 1)
    order = rng.permutation(len(labels))
    scores, labels = scores[order], labels[order]
    for tpr in (0.95, 0.5, 0.9, 1.0, 0.0):
        assert _ours(scores, labels, tpr) == pytest.approx(
            _sklearn_figures(scores, labels, tpr), abs=1e-12
        )


def test_ranking_metrics_count_ties_as_ties() -> None:
    # Every score equal: no information. AUROC 1/2, AP = the positive share, FPR95 = 1.
    labels = np.r_[np.ones(7, dtype=np.int64), np.zeros(5, dtype=np.int64)]
    flat = np.zeros(12)
    ours = _ours(flat, labels)
    assert ours == _sklearn_figures(flat, labels) | {"aupr_out": pytest.approx(5 / 12)}
    assert ours["auroc"] == 0.5 and ours["aupr_in"] == pytest.approx(7 / 12)
    assert ours["fpr95"] == 1.0
    # A tie across the classes at the top counts half a pair: (in 3, ood 3) 1/2,
    # (in 3, ood 1) 1, (in 2, ood 3) 0, (in 2, ood 1) 1.
    scores = np.array([3.0, 3.0, 2.0, 1.0])
    labels = np.array([1, 0, 1, 0])
    assert metrics.auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == 2.5 / 4
    assert _ours(scores, labels) == pytest.approx(_sklearn_figures(scores, labels), abs=1e-15)
    with pytest.raises(ValueError, match="one positive and one negative"):
        metrics.auroc(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc(torch.tensor([0.0, math.nan]), torch.tensor([1, 0]))


def _saturated_logits(n: int, low: float, high: float, generator: torch.Generator):
    """[n, 10] float64 logits whose top class leads the runner-up by `low`..`high`."""
    logits = torch.randn(n, 10, generator=generator, dtype=torch.float64)
    margin = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    logits[:, 0] = logits[:, 1:].max(dim=1).values + margin
    return logits


def _exact_scores(log_probs: torch.Tensor, score: str) -> np.ndarray:
    """Max log-probability or -entropy of each row of (unnormalised) log-probabilities, in
    50-digit arithmetic, rounded to float64 once."""
    mpmath = pytest.importorskip("mpmath")
    out = []
    with mpmath.workdps(50):
        for row in log_probs.double().tolist():
            weights = [mpmath.exp(mpmath.mpf(z)) for z in row]
            total = mpmath.fsum(weights)
            if score == "max_prob":
                out.append(float(mpmath.log(max(weights) / total)))
            else:
                log_p = [mpmath.log(w / total) for w in weights if w > 0]
                out.append(float(mpmath.fsum(mpmath.exp(v) * v for v in log_p)))
    return np.array(out)


def _exact_figures(in_log_probs: torch.Tensor, ood_log_probs: torch.Tensor, score: str):
    scores = np.r_[_exact_scores(in_log_probs, score), _exact_scores(ood_log_probs, score)]
    labels = np.r_[np.ones(len(in_log_probs)), np.zeros(len(ood_log_probs))].astype(np.int64)
    return _sklearn_figures(scores, labels)


@pytest.mark.parametrize("score", ["max_prob", "entropy"])
def test_saturated_ood_scores_do_not_tie(score: str) -> None:
    """Logit margins 25-30 (in-distribution) vs 18-22 (OoD): a float32 softmax has p_max =
    1.0 for every input, so ranked by it all 400 tie (torchmetrics gave AUROC 0.5, FPR95
    1.0). The inputs are perfectly separable: AUROC 1, FPR95 0."""
    generator = torch.Generator().manual_seed(0)
    in_logits = _saturated_logits(200, 25.0, 30.0, generator)
    ood_logits = _saturated_logits(200, 18.0, 22.0, generator)
    in_log_probs = in_logits.float().log_softmax(dim=1)  # float32, as members predict
    ood_log_probs = ood_logits.float().log_softmax(dim=1)
    assert bool((in_log_probs.exp().max(dim=1).values == 1.0).all())
    assert bool((ood_log_probs.exp().max(dim=1).values == 1.0).all())
    perfect = {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert _exact_figures(in_log_probs, ood_log_probs, score) == perfect
    assert metrics.ood_detection_from_log_probs(in_log_probs, ood_log_probs, score) == perfect
    # Float32 probabilities too: the non-top classes still carry the margin.
    assert metrics.ood_detection(in_log_probs.exp(), ood_log_probs.exp(), score) == perfect
    # The scores themselves are exact to float64 rounding (margins up to 30: e^-30 ~ 1e-13).
    ours = metrics.ood_log_scores(in_log_probs, score).numpy()
    np.testing.assert_allclose(ours, _exact_scores(in_log_probs, score), rtol=1e-12)


@pytest.mark.parametrize("score", ["max_prob", "entropy"])
@pytest.mark.parametrize(("in_range", "ood_range"), [((17, 40), (12, 25)), ((0, 6), (0, 3))])
def test_ood_detection_matches_sklearn_on_overlapping_sets(
    score: str, in_range: tuple[float, float], ood_range: tuple[float, float]
) -> None:
    """Overlapping saturated sets (margins above 17: p_max = 1.0 in float32) and ordinary
    ones; the reference ranks the same float32 log-probabilities in 50-digit arithmetic."""
    generator = torch.Generator().manual_seed(int(in_range[1]))
    in_log_probs = _saturated_logits(300, *in_range, generator).float().log_softmax(dim=1)
    ood_log_probs = _saturated_logits(250, *ood_range, generator).float().log_softmax(dim=1)
    expected = _exact_figures(in_log_probs, ood_log_probs, score)
    assert 0.6 < expected["auroc"] < 0.99 and 0.0 < expected["fpr95"] < 1.0
    ours = metrics.ood_detection_from_log_probs(in_log_probs, ood_log_probs, score)
    assert ours == pytest.approx(expected, abs=1e-12)
    # Probabilities (the old entry point), float64: the same figures.
    ours = metrics.ood_detection(in_log_probs.double().exp(), ood_log_probs.double().exp(), score)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_max_log_prob_does_not_saturate_in_float64() -> None:
    # Margins 40, 100, 700: p_max rounds to 1.0 even in float64, log p_max = -e^-margin not.
    log_probs = torch.zeros(3, 3, dtype=torch.float64)
    log_probs[:, 1:] = -torch.tensor([[40.0], [100.0], [700.0]])
    scores = metrics.ood_log_scores(log_probs, "max_prob")
    expected = [-math.log1p(2 * math.exp(-m)) for m in (40.0, 100.0, 700.0)]
    assert scores.tolist() == pytest.approx(expected, rel=1e-14)
    assert bool((scores < 0).all()) and scores[0] < scores[1] < scores[2]
    entropy = metrics.entropy_from_log_probs(log_probs)
    assert bool((entropy > 0).all()) and entropy[0] > entropy[1] > entropy[2]
    # Probabilities of exactly 0 (-inf) contribute nothing; a shift changes nothing.
    with_zero = torch.tensor([[0.0, -math.inf, -1.0]])
    assert metrics.entropy_from_log_probs(with_zero).item() == pytest.approx(
        float(metrics.entropy(torch.tensor([[1.0, 0.0, math.exp(-1.0)]]) / (1 + math.exp(-1))))
    )
    assert torch.equal(metrics.ood_log_scores(log_probs + 5.0, "entropy"), -entropy)


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
