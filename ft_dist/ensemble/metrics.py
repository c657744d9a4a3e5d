"""Ensemble metrics (SPEC §7) on probability tensors.

Every function takes probabilities, never logits: an ensemble's prediction is the mean of
its members' softmax outputs, and that mean has no logits. Inputs are `[N, K]` (one
model) or `[M, N, K]` (M members); results are Python floats or `[M, M]` tensors.
Computations run in float64 so that the figures do not depend on the input dtype.
Temperature scaling is the exception: it acts on log-probabilities (a member's
log-softmax, or the log of the ensemble's mean probability, as Ashukha et al. 2020 scale
an ensemble), see `fit_temperature`.

Accuracy comes from torchmetrics. ECE is ours because the FreeTickets/Guo et al.
convention puts a confidence c in bin b when b/B < c <= (b+1)/B, while torchmetrics uses
[b/B, (b+1)/B) plus a separate bin for c == 1.0 exactly (common for saturated float32
softmax); away from bin edges both agree, which the tests check. The same bins feed the
reliability diagram.

The OoD figures (AUROC, AUPR, FPR95) are ours too, from an exact ranking in float64
(`roc_counts`): torchmetrics treats scores outside [0, 1] as logits and applies a sigmoid,
which rounds the -entropy of confident predictions (|score| below ~1e-16) to 0.5, so
different scores tie. The scores come from log-probabilities in float64, renormalised
through the non-top classes (`normalized_log_probs`), so a confident prediction's max
probability does not saturate at 1.0 as a float32 softmax does for logit margins above ~17.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torchmetrics.functional.classification import multiclass_accuracy

NUM_ECE_BINS = 15
# The official FreeTickets ECE (ensemble_freetickets.py, `expected_calibration_error`)
# bins with `np.digitize(conf, np.linspace(0, 1, 15), right=True)`: 15 edges, so 14
# right-closed bins of width 1/14 (index 0 holds only conf == 0, which a top-1
# probability never is). `ece(..., num_bins=OFFICIAL_ECE_BINS)` is that figure.
OFFICIAL_ECE_BINS = 14
_EPS = 1e-12
_TINY = 1e-300  # log-probability floor for probabilities that underflowed to 0

OodScore = Literal["max_prob", "entropy"]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-1 confidence: the data of a reliability diagram."""

    edges: torch.Tensor  # [B + 1] bin edges 0 .. 1
    counts: torch.Tensor  # [B] number of predictions per bin
    confidence: torch.Tensor  # [B] mean top-1 confidence per bin (0 where empty)
    accuracy: torch.Tensor  # [B] fraction correct per bin (0 where empty)


def _check_probs(probs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    if probs.ndim != 2:
        raise ValueError(f"expected probabilities of shape [N, K], got {tuple(probs.shape)}")
    if targets is not None and targets.shape != probs.shape[:1]:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not match {probs.shape[0]} predictions"
        )
    return probs.detach().to(torch.float64)


def accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy (torchmetrics, micro average = fraction of correct predictions)."""
    probs = _check_probs(probs, targets)
    value = multiclass_accuracy(probs, targets, num_classes=probs.shape[1], average="micro")
    return float(value)


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood -log p[y] (probabilities clamped at 1e-12)."""
    probs = _check_probs(probs, targets)
    picked = probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    return float(-picked.clamp_min(_EPS).log().mean())


def brier(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Multiclass Brier score: mean over inputs of sum_k (p_k - 1[y = k])^2, in [0, 2]."""
    probs = _check_probs(probs, targets)
    onehot = torch.nn.functional.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)
    return float((probs - onehot).pow(2).sum(dim=1).mean())


def reliability_bins(
    probs: torch.Tensor, targets: torch.Tensor, num_bins: int = NUM_ECE_BINS
) -> ReliabilityBins:
    """Bin top-1 confidences into `num_bins` equal-width bins (b/B, (b+1)/B]."""
    probs = _check_probs(probs, targets)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).to(probs.dtype)
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=probs.dtype)
    index = _bin_index(confidence, num_bins)
    counts = torch.zeros(num_bins, dtype=probs.dtype).scatter_add_(
        0, index, torch.ones_like(confidence)
    )
    conf_sum = torch.zeros(num_bins, dtype=probs.dtype).scatter_add_(0, index, confidence)
    correct_sum = torch.zeros(num_bins, dtype=probs.dtype).scatter_add_(0, index, correct)
    safe = counts.clamp_min(1.0)
    return ReliabilityBins(edges, counts, conf_sum / safe, correct_sum / safe)


def _bin_index(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin b of each confidence c with b/B < c <= (b+1)/B (c == 0 goes to bin 0)."""
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype)
    # bucketize(right=False) gives i with edges[i-1] < c <= edges[i]; c == 0 would be bin -1.
    return (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, num_bins - 1)


def ece(probs: torch.Tensor, targets: torch.Tensor, num_bins: int = NUM_ECE_BINS) -> float:
    """Expected calibration error, L1: sum_b (n_b / N) |accuracy_b - confidence_b|."""
    bins = reliability_bins(probs, targets, num_bins)
    weights = bins.counts / bins.counts.sum()
    return float((weights * (bins.accuracy - bins.confidence).abs()).sum())


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy per input, in nats: -sum_k p_k log p_k (0 log 0 = 0)."""
    probs = _check_probs(probs)
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim=1)


def normalized_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """[N, K] log-probabilities in float64, renormalised per input from the non-top classes.

    log p_top = -log1p(sum_{k != top} exp(z_k - z_top)) and log p_k = z_k - z_top + log p_top,
    for any per-input shift of z (log-softmax, log of a mean probability, logits). A float32
    log-softmax holds log p_top = 0 exactly once the margin passes ~17 (1 + e^-17 rounds to
    1), but the other classes still carry the margin: this recovers log p_top ~ -e^-margin
    down to e^-745. Entries of -inf (probabilities that were exactly 0) stay -inf.
    """
    if log_probs.ndim != 2:
        raise ValueError(
            f"expected log-probabilities of shape [N, K], got {tuple(log_probs.shape)}"
        )
    z = log_probs.detach().to(torch.float64)
    top, index = z.max(dim=1, keepdim=True)
    shifted = z - top
    others = shifted.scatter(1, index, -math.inf)  # every class but one top class
    rest = torch.logsumexp(others, dim=1, keepdim=True)  # log sum_{k != top} p_k / p_top
    log_top = -torch.logaddexp(torch.zeros_like(rest), rest)  # -log1p(exp(rest))
    return shifted + log_top


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy per input in nats, float64, from (unnormalised) log-probabilities."""
    log_p = normalized_log_probs(log_probs)
    terms = log_p.exp() * log_p
    return -torch.where(log_p == -math.inf, 0.0, terms).sum(dim=1)  # 0 log 0 = 0


def ood_log_scores(log_probs: torch.Tensor, score: OodScore) -> torch.Tensor:
    """Higher = more in-distribution, float64: "max_prob" gives the max log-probability
    (ranks as the max probability, without saturating at 1), "entropy" minus the entropy.
    Both from `normalized_log_probs`."""
    if score == "max_prob":
        return normalized_log_probs(log_probs).max(dim=1).values
    if score == "entropy":
        return -entropy_from_log_probs(log_probs)
    raise ValueError(f"OoD score must be 'max_prob' or 'entropy', got {score!r}")


def _log_of_probs(probs: torch.Tensor) -> torch.Tensor:
    return _check_probs(probs).log()  # float64; a probability of 0 gives -inf


def ood_scores(probs: torch.Tensor, score: OodScore) -> torch.Tensor:
    """`ood_log_scores` of probabilities (max log-probability, or minus the entropy).

    The log is taken in float64; where a float32 softmax rounded p_top to 1.0, the non-top
    probabilities still give log p_top (see `normalized_log_probs`).
    """
    return ood_log_scores(_log_of_probs(probs), score)


@dataclass(frozen=True)
class RocCounts:
    """Cumulative counts at every distinct score, highest first (scikit-learn's
    ``_binary_clf_curve``): ``tps[i]`` / ``fps[i]`` positives / negatives scoring >= the
    i-th highest distinct score. Inputs of equal score enter at the same threshold, so ties
    count as ties (half a pair in the AUROC)."""

    tps: torch.Tensor  # [T] int64, non-decreasing, ends at the number of positives
    fps: torch.Tensor  # [T] int64, non-decreasing, ends at the number of negatives
    thresholds: torch.Tensor  # [T] float64, decreasing

    @property
    def positives(self) -> int:
        return int(self.tps[-1])

    @property
    def negatives(self) -> int:
        return int(self.fps[-1])


def roc_counts(scores: torch.Tensor, labels: torch.Tensor) -> RocCounts:
    """Rank `scores` (float64, higher = more positive) against `labels` (1 = positive)."""
    scores = scores.detach().reshape(-1).to(torch.float64).cpu()
    labels = labels.detach().reshape(-1).cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores for {labels.numel()} labels")
    if torch.isnan(scores).any():
        raise ValueError("OoD scores contain NaN (NaN probabilities, or a row of zeros?)")
    positive = labels.to(torch.bool)
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], positive[order].to(torch.int64)
    last = torch.cat(  # the last input of each run of equal scores
        [torch.nonzero(ranked[1:] != ranked[:-1]).reshape(-1), torch.tensor([len(ranked) - 1])]
    )
    tps = hits.cumsum(0)[last]
    counts = RocCounts(tps, last + 1 - tps, ranked[last])
    if counts.positives == 0 or counts.negatives == 0:
        raise ValueError("OoD metrics need at least one positive and one negative input")
    return counts


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (label 1 positive, higher score = more positive), ties
    counted as half: the Mann-Whitney statistic, as scikit-learn's ``roc_auc_score``.

    The trapezoids are summed in integers (twice the area times P·N) and divided once.
    """
    counts = roc_counts(scores, labels)
    zero = torch.zeros(1, dtype=torch.int64)
    tps, fps = torch.cat([zero, counts.tps]), torch.cat([zero, counts.fps])
    twice_area = int(((fps[1:] - fps[:-1]) * (tps[1:] + tps[:-1])).sum())
    return twice_area / (2 * counts.positives * counts.negatives)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """sum_i (R_i - R_{i-1}) P_i over the distinct scores, highest first: the step-wise
    area under the precision-recall curve, as scikit-learn's ``average_precision_score``
    (not a trapezoid under an interpolated curve)."""
    counts = roc_counts(scores, labels)
    tps = counts.tps.to(torch.float64)
    precision = tps / (counts.tps + counts.fps).to(torch.float64)
    recall_steps = torch.diff(counts.tps, prepend=torch.zeros(1, dtype=torch.int64))
    return float((recall_steps.to(torch.float64) * precision).sum()) / counts.positives


def fpr_at_tpr(scores: torch.Tensor, labels: torch.Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold (highest first) whose true-positive rate
    reaches `tpr`.

    Positives (label 1) should score high. Thresholds are +inf, then the distinct scores;
    an input passes a threshold t when its score is >= t. TPR = tps / P in float64, so
    this is ``fpr[searchsorted(tpr_curve, tpr)]`` of scikit-learn's ``roc_curve(...,
    drop_intermediate=False)``: no interpolation between thresholds.
    """
    counts = roc_counts(scores, labels)
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"the true-positive rate must be in [0, 1], got {tpr}")
    zero = torch.zeros(1, dtype=torch.int64)  # threshold +inf: nothing accepted
    tps, fps = torch.cat([zero, counts.tps]), torch.cat([zero, counts.fps])
    rates = tps.to(torch.float64) / counts.positives  # ends at exactly 1.0
    first = int(torch.nonzero(rates >= tpr)[0])
    return int(fps[first]) / counts.negatives


def _scores_and_labels(
    in_scores: torch.Tensor, out_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("OoD metrics need at least one in-distribution and one OoD input")
    labels = torch.cat(
        [
            torch.ones(len(in_scores), dtype=torch.long),
            torch.zeros(len(out_scores), dtype=torch.long),
        ]
    )
    return torch.cat([in_scores, out_scores]), labels


def ood_detection_from_log_probs(
    in_log_probs: torch.Tensor, ood_log_probs: torch.Tensor, score: OodScore
) -> dict[str, float]:
    """The OoD figures uncertainty papers report, from log-probabilities, by `score`.

    In-distribution inputs are the **positive** class; `score` (max log-probability or
    minus the entropy, float64, `ood_log_scores`) is higher for in-distribution:

    * ``auroc``: area under the ROC of in-distribution (positive) vs OoD;
    * ``aupr_in``: average precision with in-distribution positive, ranked by `score`;
    * ``aupr_out``: average precision with OoD positive, ranked by minus `score`;
    * ``fpr95``: fraction of OoD inputs accepted at the first threshold (highest first)
      that keeps >= 95 % of the in-distribution inputs (FPR at 95 % TPR).

    All from an exact ranking in float64 with ties counted as ties (`roc_counts`), equal to
    scikit-learn's ``roc_auc_score``, ``average_precision_score`` and ``roc_curve``.
    `in_log_probs` / `ood_log_probs` are [N, K] log-probabilities up to a per-input
    constant (a member's log-softmax, `ensemble_log_probs`), any float dtype.
    """
    scores, labels = _scores_and_labels(
        ood_log_scores(in_log_probs, score), ood_log_scores(ood_log_probs, score)
    )
    return {
        "auroc": auroc(scores, labels),
        "aupr_in": average_precision(scores, labels),
        "aupr_out": average_precision(-scores, 1 - labels),
        "fpr95": fpr_at_tpr(scores, labels, 0.95),
    }


def ood_detection(
    in_probs: torch.Tensor, ood_probs: torch.Tensor, score: OodScore
) -> dict[str, float]:
    """`ood_detection_from_log_probs` of probabilities (their log in float64).

    In-distribution is the positive class. Prefer log-probabilities where you have them:
    a probability that underflowed to 0 (margins above ~87 in float32) carries nothing.
    """
    return ood_detection_from_log_probs(_log_of_probs(in_probs), _log_of_probs(ood_probs), score)


def classification_metrics(
    probs: torch.Tensor, targets: torch.Tensor, num_bins: int = NUM_ECE_BINS
) -> dict[str, float]:
    """The per-model table of SPEC §7: accuracy, NLL, ECE (`num_bins` bins, L1), Brier."""
    return {
        "accuracy": accuracy(probs, targets),
        "nll": nll(probs, targets),
        "ece": ece(probs, targets, num_bins),
        "brier": brier(probs, targets),
    }


# --- temperature scaling (Guo et al. 2017; for ensembles as in Ashukha et al. 2020) -----


def ensemble_log_probs(member_log_probs: torch.Tensor) -> torch.Tensor:
    """[N, K] log of the members' mean probability: logsumexp over members - log M."""
    if member_log_probs.ndim != 3:
        raise ValueError(
            f"expected member log-probabilities of shape [M, N, K], "
            f"got {tuple(member_log_probs.shape)}"
        )
    log_probs = member_log_probs.detach().to(torch.float64)
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def temperature_scale(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Calibrated probabilities softmax(log p / T), float64 (argmax, so accuracy, unchanged).

    For one model log p is its log-softmax, and log p / T differs from logits / T only
    by a per-input constant, which the softmax removes: this *is* temperature scaling.
    """
    return (log_probs.detach().to(torch.float64) / temperature).softmax(dim=-1)


def _nll_slope(
    log_probs: torch.Tensor, picked: torch.Tensor, beta: float, chunk: int
) -> tuple[float, float]:
    """d/dβ and d²/dβ² of the mean NLL of softmax(β z), summed in row chunks."""
    slope = curvature = 0.0
    for z, z_true in zip(log_probs.split(chunk), picked.split(chunk), strict=True):
        p = (beta * z).softmax(dim=1)
        mean = (p * z).sum(dim=1)
        slope += float((mean - z_true).sum())
        curvature += float((p * (z - mean.unsqueeze(1)).pow(2)).sum())
    count = len(log_probs)
    return slope / count, curvature / count


def fit_temperature(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    chunk: int = 8192,
) -> float:
    """The temperature T that minimises the mean NLL of softmax(log p / T) on (log p, y).

    With β = 1/T the NLL, -β z_y + logsumexp(β z), is convex in β, and its slope
    E_softmax(βz)[z] - z_y grows with β: safeguarded Newton on the slope (bisection in
    log β whenever a Newton step leaves the bracket) finds the minimum to machine
    precision. T is clipped to `bounds`: a model that is right on every input wants
    T -> 0 and gets the lower bound.
    """
    log_probs = _check_probs(log_probs, targets).clamp_min(math.log(_TINY))
    picked = log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    low_t, high_t = bounds
    if not 0 < low_t < high_t:
        raise ValueError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    lo, hi = 1.0 / high_t, 1.0 / low_t  # bracket on β
    if _nll_slope(log_probs, picked, lo, chunk)[0] >= 0:
        return high_t
    if _nll_slope(log_probs, picked, hi, chunk)[0] <= 0:
        return low_t
    beta = min(max(1.0, lo), hi)
    for _ in range(200):
        slope, curvature = _nll_slope(log_probs, picked, beta, chunk)
        if slope == 0.0:
            break
        if slope < 0:
            lo = beta
        else:
            hi = beta
        newton = beta - slope / curvature if curvature > 0 else math.nan
        if abs(newton - beta) <= 1e-12 * beta:  # converged (quadratically, in ~6 steps)
            beta = newton
            break
        beta = newton if lo <= newton <= hi else math.sqrt(lo * hi)
        if hi - lo <= 1e-12 * hi:
            break
    return 1.0 / beta


def calibrated_metrics(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    num_bins: int = NUM_ECE_BINS,
) -> dict[str, float]:
    """`classification_metrics` of softmax(log p / T), with T itself under "temperature"."""
    table = classification_metrics(temperature_scale(log_probs, temperature), targets, num_bins)
    return {"temperature": temperature, **table}


def deep_ensemble_equivalent(nll: float, dense_curve: Sequence[float]) -> tuple[float, str | None]:
    """The deep-ensemble equivalent (DEE, Ashukha et al., ICLR 2020) of a model's NLL.

    ``dense_curve[k - 1]`` is the (calibrated) NLL of an ensemble of k dense members (the
    mean over member subsets of size k). DEE = min{l >= 1 : NLL_DE(l) <= nll}, NLL_DE
    linear between integers: how many dense members an ensemble of them needs to be as
    good. Returns (value, None) inside the curve; (1.0, "≤1") for a model no better than
    one dense member; (len(curve), f">{len(curve)}") for one better than the whole curve.
    """
    if not dense_curve:
        raise ValueError("the deep-ensemble curve needs at least one ensemble size")
    if nll >= dense_curve[0]:
        return 1.0, "≤1"
    for size in range(1, len(dense_curve)):
        lower, upper = dense_curve[size - 1], dense_curve[size]  # NLL at size, size + 1
        if upper <= nll:  # and lower > nll: the crossing lies between size and size + 1
            return size + (lower - nll) / (lower - upper), None
    return float(len(dense_curve)), f">{len(dense_curve)}"


@dataclass
class MetricSums:
    """Streaming `classification_metrics`: add batches, read the same four figures.

    Keeps only sums (correct, -log p[y], Brier terms, per-bin confidence/correct counts),
    so pooled figures over millions of corrupted inputs (all corruptions x severities,
    as FreeTickets reports them) need no stored probabilities.
    """

    num_bins: int = NUM_ECE_BINS
    count: int = 0
    correct: float = 0.0
    nll_sum: float = 0.0
    brier_sum: float = 0.0
    bin_counts: torch.Tensor | None = None  # [B] inputs per confidence bin
    bin_confidence: torch.Tensor | None = None  # [B] summed top-1 confidence
    bin_correct: torch.Tensor | None = None  # [B] summed correctness

    def add_(self, probs: torch.Tensor, targets: torch.Tensor) -> MetricSums:
        probs = _check_probs(probs, targets)
        targets = targets.long()
        confidence, predicted = probs.max(dim=1)
        hits = (predicted == targets).to(probs.dtype)
        picked = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
        onehot = torch.nn.functional.one_hot(targets, probs.shape[1]).to(probs.dtype)
        index = _bin_index(confidence, self.num_bins)
        zeros = torch.zeros(self.num_bins, dtype=torch.float64)
        batch = MetricSums(
            num_bins=self.num_bins,
            count=len(targets),
            correct=float(hits.sum()),
            nll_sum=float(-picked.clamp_min(_EPS).log().sum()),
            brier_sum=float((probs - onehot).pow(2).sum()),
            bin_counts=zeros.scatter_add(0, index, torch.ones_like(confidence)),
            bin_confidence=zeros.scatter_add(0, index, confidence),
            bin_correct=zeros.scatter_add(0, index, hits),
        )
        return self.merge_(batch)

    def merge_(self, other: MetricSums) -> MetricSums:
        """Add another accumulator's sums (pooling several sets into one)."""
        if other.bin_counts is None:
            return self
        if self.bin_counts is None:
            self.bin_counts = torch.zeros_like(other.bin_counts)
            self.bin_confidence = torch.zeros_like(other.bin_counts)
            self.bin_correct = torch.zeros_like(other.bin_counts)
        self.count += other.count
        self.correct += other.correct
        self.nll_sum += other.nll_sum
        self.brier_sum += other.brier_sum
        self.bin_counts += other.bin_counts
        self.bin_confidence += other.bin_confidence
        self.bin_correct += other.bin_correct
        return self

    def result(self) -> dict[str, float]:
        """accuracy, nll, ece, brier over everything added (as `classification_metrics`)."""
        if self.count == 0 or self.bin_counts is None:
            raise ValueError("no predictions were added")
        gap = (self.bin_correct - self.bin_confidence).abs().sum()  # sum_b n_b |acc_b - conf_b|
        return {
            "accuracy": self.correct / self.count,
            "nll": self.nll_sum / self.count,
            "ece": float(gap) / self.count,
            "brier": self.brier_sum / self.count,
        }


def _check_members(member_probs: torch.Tensor) -> torch.Tensor:
    if member_probs.ndim != 3:
        raise ValueError(
            f"expected member probabilities of shape [M, N, K], got {tuple(member_probs.shape)}"
        )
    return member_probs.detach().to(torch.float64)


def ensemble_probs(member_probs: torch.Tensor) -> torch.Tensor:
    """The ensemble prediction: the mean of the members' probabilities (never of logits)."""
    return _check_members(member_probs).mean(dim=0)


def pairwise_disagreement(member_probs: torch.Tensor) -> torch.Tensor:
    """[M, M]: fraction of inputs on which members i and j predict a different top-1."""
    predicted = _check_members(member_probs).argmax(dim=2)  # [M, N]
    different = predicted.unsqueeze(1) != predicted.unsqueeze(0)  # [M, M, N]
    return different.to(torch.float64).mean(dim=2)


def pairwise_kl(member_probs: torch.Tensor) -> torch.Tensor:
    """[M, M]: mean over inputs of KL(p_i || p_j), in nats (not symmetric)."""
    probs = _check_members(member_probs)
    log_probs = probs.clamp_min(_EPS).log()
    # KL(p_i || p_j) = sum_k p_i (log p_i - log p_j); the p_i log p_i term is -H(p_i).
    neg_entropy = (probs * log_probs).sum(dim=2)  # [M, N]
    cross = torch.einsum("ink,jnk->ijn", probs, log_probs)  # sum_k p_i log p_j
    kl = (neg_entropy.unsqueeze(1) - cross).mean(dim=2).clamp_min(0.0)
    return kl.fill_diagonal_(0.0)  # exactly 0, not rounding noise


def mask_jaccard(masks_a: dict[str, torch.Tensor], masks_b: dict[str, torch.Tensor]) -> float:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of two members' active weights over all masked layers."""
    if masks_a.keys() != masks_b.keys():
        only = sorted(set(masks_a) ^ set(masks_b))
        raise ValueError(f"the two tickets mask different layers: {only[:5]}")
    intersection = union = 0
    for name, mask_a in masks_a.items():
        mask_b = masks_b[name]
        if mask_a.shape != mask_b.shape:
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask_a.shape)} in one ticket and "
                f"{tuple(mask_b.shape)} in the other"
            )
        intersection += int((mask_a.bool() & mask_b.bool()).sum())
        union += int((mask_a.bool() | mask_b.bool()).sum())
    return intersection / union if union else 1.0


def pairwise_mask_jaccard(masks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[M, M] Jaccard overlaps of every pair of members' masks (1 on the diagonal)."""
    size = len(masks)
    out = torch.ones(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(i + 1, size):
            out[i, j] = out[j, i] = mask_jaccard(masks[i], masks[j])
    return out


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    """Mean of the i != j entries of an [M, M] pairwise matrix (nan for M = 1)."""
    size = matrix.shape[0]
    if size < 2:
        return float("nan")
    off = ~torch.eye(size, dtype=torch.bool)
    return float(matrix[off].mean())
