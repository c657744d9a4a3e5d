"""report.md: the evaluation report as Markdown tables (members, ensemble, OoD, corruptions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) < 1e-12:
            return f"{0.0:.{digits}f}"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _model_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(m["name"], m) for m in report["members"]] + [("**ensemble**", report["ensemble"])]


def _test_table(report: dict[str, Any]) -> list[str]:
    has_ood = "ood" in report["ensemble"]
    calibrated = "calibrated" in report["ensemble"]
    header = ["model", "accuracy", "NLL", "ECE", "Brier"]
    header += ["T", "calibrated NLL", "calibrated ECE"] if calibrated else []
    header += ["OoD AUROC (max-prob)", "OoD AUROC (entropy)"] if has_ood else []
    header += ["density", "train FLOPs"]
    rows = []
    for name, row in _model_rows(report):
        test = row["test"]
        cells = [name, test["accuracy"], test["nll"], test["ece"], test["brier"]]
        if calibrated:
            cal = row["calibrated"]
            cells += [cal["temperature"], cal["nll"], cal["ece"]]
        if has_ood:
            cells += [row["ood"]["auroc_max_prob"], row["ood"]["auroc_entropy"]]
        if name.startswith("**"):
            cells += [None, report["flops"].get("train_flops")]
        else:
            cells += [row.get("mask_density"), row["meta"].get("train_flops")]
        rows.append(cells)
    return _table(header, rows)


def _calibration_note(report: dict[str, Any]) -> list[str]:
    if "calibrated" not in report["ensemble"]:
        return [
            "No calibrated figures: no validation split to fit temperatures on "
            "(`--calibration-split NAME`).",
            "",
        ]
    split = (report.get("data") or {}).get("calibration_split") or "validation"
    return [
        f"Calibrated: temperature scaling fitted on the {split!r} split "
        f"({report.get('num_val_samples')} inputs) by minimising its NLL, one T per member and "
        "one for the ensemble, applied to the log of the ensemble's mean probability "
        "(Ashukha et al., ICLR 2020). Accuracy is unchanged by a temperature.",
        "",
    ]


def _sizes(report: dict[str, Any]) -> list[str]:
    curve = report.get("ensemble_sizes") or []
    if len(curve) < 2:
        return []
    calibrated = "calibrated_nll" in curve[0]
    header = ["members", "subsets", "accuracy", "NLL", "ECE"]
    header += ["calibrated NLL", "calibrated ECE"] if calibrated else []
    rows = []
    for point in curve:
        cells = [point["size"], point["subsets"], point["accuracy"], point["nll"], point["ece"]]
        if calibrated:
            cells += [point["calibrated_nll"], point["calibrated_ece"]]
        rows.append(cells)
    return [
        "## Ensemble size",
        "",
        "Ensembles of k of the members, each figure the mean over the member subsets of "
        "size k (every subset, or 20 drawn with a fixed seed).",
        "",
        *_table(header, rows),
    ]


def _cost(report: dict[str, Any]) -> list[str]:
    cost = report.get("cost")
    if not cost:
        return []
    header = [
        "parameters (one dense model)",
        "ensemble active parameters",
        "× one dense model",
        f"inference images/s ({cost.get('inference_device')})",
    ]
    rows = [
        [
            cost["dense_parameters"],
            cost["ensemble_active_parameters"],
            cost["ensemble_parameters_vs_dense"],
            cost.get("inference_images_per_s"),
        ]
    ]
    note = f"Images/s: {cost.get('inference_note')}."
    return ["## Parameters and throughput", "", *_table(header, rows), note, ""]


def _matrix_table(title: str, matrix: list[list[float]], names: list[str]) -> list[str]:
    rows = [[name, *row] for name, row in zip(names, matrix, strict=True)]
    return [f"**{title}**", ""] + _table([""] + names, rows)


def _diversity(report: dict[str, Any]) -> list[str]:
    diversity = report["diversity"]
    names = [m["name"] for m in report["members"]]
    lines = ["## Diversity", ""]
    lines += _table(
        ["mean pairwise disagreement", "mean pairwise KL", "mean mask Jaccard"],
        [[diversity["mean_disagreement"], diversity["mean_kl"], diversity["mean_mask_jaccard"]]],
    )
    if len(names) >= 2:
        lines += _matrix_table("Prediction disagreement", diversity["disagreement"], names)
        lines += _matrix_table("KL(row ‖ column), nats", diversity["kl"], names)
        lines += _matrix_table("Mask overlap (Jaccard)", diversity["mask_jaccard"], names)
    return lines


OOD_COLUMNS = (("auroc", "AUROC"), ("aupr_in", "AUPR-in"), ("aupr_out", "AUPR-out"))


def _ood_sets(report: dict[str, Any]) -> list[str]:
    sets = list(report["ensemble"].get("ood_sets", {}))
    if not sets:
        return []
    counts = report.get("ood_samples", {})
    lines = [
        "## Out-of-distribution detection",
        "",
        "In-distribution = test split (positive for AUROC, AUPR-in and the TPR); AUPR-out "
        "takes the OoD inputs as positive; FPR95 = fraction of OoD inputs accepted at the "
        "threshold that keeps 95 % of the test inputs (lower is better). Scores: maximum "
        "probability and predictive entropy.",
        "",
    ]
    for name in sets:
        header = ["model"]
        for label in ("max-prob", "entropy"):
            header += [f"{title} ({label})" for _, title in OOD_COLUMNS]
            header += [f"FPR95 ({label})"]
        rows = []
        for model, row in _model_rows(report):
            figures = row["ood_sets"][name]
            cells: list[Any] = [model]
            for score in ("max_prob", "entropy"):
                cells += [figures.get(f"{key}_{score}") for key, _ in OOD_COLUMNS]
                cells += [figures.get(f"fpr95_{score}")]
            rows.append(cells)
        lines += [f"**{name}** ({counts.get(name, '?')} inputs)", "", *_table(header, rows)]
    return lines


def _corruption_table(
    report: dict[str, Any], figures: dict[str, Any], names: tuple[str, str, str]
) -> list[str]:
    rows = [
        [m["name"], row.get("accuracy"), row.get("nll"), row.get("ece")]
        for m, row in zip(report["members"], figures["members"], strict=True)
    ]
    rows.append(["**ensemble**", *(figures["ensemble"].get(k) for k in ("accuracy", "nll", "ece"))])
    return _table(["model", *names], rows)


def _corruptions(report: dict[str, Any]) -> list[str]:
    corruptions = report.get("corruptions")
    if not corruptions:
        return []
    pooled = corruptions["pooled"]
    lines = ["## Corruptions", "", f"Source: {corruptions['source']}.", ""]
    lines += [
        "cA / cNLL / cECE as google/uncertainty-baselines reports them: per severity the mean "
        "over corruption types, then the mean over severities:",
        "",
    ]
    lines += _corruption_table(report, corruptions["mean"], ("cA", "cNLL", "cECE"))
    calibrated = corruptions.get("calibrated")
    if calibrated:
        lines += [
            "The same after temperature scaling (temperatures fitted on the validation split):",
            "",
        ]
        lines += _corruption_table(
            report, calibrated["mean"], ("cA", "calibrated cNLL", "calibrated cECE")
        )
    lines += [
        f"Pooled: the predictions of every corruption x severity as one set of "
        f"{pooled['num_samples']} inputs (the FreeTickets paper's figures):",
        "",
    ]
    lines += _corruption_table(report, pooled, ("accuracy", "NLL", "ECE"))
    by_severity = corruptions.get("by_severity", {}).get("ensemble", {})
    if by_severity:
        lines += ["Ensemble per severity (mean over corruption types):", ""]
        lines += _table(
            ["severity", "accuracy", "NLL", "ECE"],
            [[s, row["accuracy"], row["nll"], row["ece"]] for s, row in by_severity.items()],
        )
    lines += ["Ensemble per corruption and severity:", ""]
    detail = [
        [name, severity, row["accuracy"], row["nll"], row["ece"]]
        for name, by_sev in corruptions["ensemble"].items()
        for severity, row in by_sev.items()
    ]
    return lines + _table(["corruption", "severity", "accuracy", "NLL", "ECE"], detail)


def _bins_text(bins: int) -> str:
    text = f"{bins} equal-width bins"
    if bins == 14:
        text += " (the official FreeTickets binning: linspace(0, 1, 15) + digitize)"
    return text


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md text."""
    flops = report["flops"]
    lines = [
        f"# Ensemble evaluation: {report['run_dir']}",
        "",
        f"{report['num_members']} member(s) ({report['layout']} layout), "
        f"{report['num_test_samples']} test samples"
        + (f", {report['num_ood_samples']} OoD samples" if report.get("num_ood_samples") else "")
        + ". Ensemble = mean of the members' softmax probabilities; ECE uses "
        + _bins_text(report.get("ece_bins", 15))
        + ".",
        "",
        "## Test set",
        "",
        *_test_table(report),
        *_calibration_note(report),
        "## FLOPs",
        "",
        *_table(
            [
                "dense forward / example",
                "ensemble inference / example",
                "relative to dense",
                "ensemble training",
            ],
            [
                [
                    flops["dense_forward_flops"],
                    flops["inference_flops"],
                    flops["inference_flops_relative_to_dense"],
                    flops["train_flops"],
                ]
            ],
        ),
        *_cost(report),
        *_ood_sets(report),
        *_diversity(report),
        *_sizes(report),
        *_corruptions(report),
    ]
    plots = report.get("plots", {})
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()] + [""]
    return "\n".join(lines)
