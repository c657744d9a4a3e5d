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
    header = ["model", "accuracy", "NLL", "ECE", "Brier"]
    header += ["OoD AUROC (max-prob)", "OoD AUROC (entropy)"] if has_ood else []
    header += ["density", "train FLOPs"]
    rows = []
    for name, row in _model_rows(report):
        test = row["test"]
        cells = [name, test["accuracy"], test["nll"], test["ece"], test["brier"]]
        if has_ood:
            cells += [row["ood"]["auroc_max_prob"], row["ood"]["auroc_entropy"]]
        if name.startswith("**"):
            cells += [None, report["flops"].get("train_flops")]
        else:
            cells += [row.get("mask_density"), row["meta"].get("train_flops")]
        rows.append(cells)
    return _table(header, rows)


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


def _ood_sets(report: dict[str, Any]) -> list[str]:
    sets = list(report["ensemble"].get("ood_sets", {}))
    if not sets:
        return []
    counts = report.get("ood_samples", {})
    header = ["model"]
    for name in sets:
        header += [f"{name} AUROC (max-prob)", f"{name} AUROC (entropy)"]
    rows = []
    for model, row in _model_rows(report):
        cells: list[Any] = [model]
        for name in sets:
            cells += [
                row["ood_sets"][name]["auroc_max_prob"],
                row["ood_sets"][name]["auroc_entropy"],
            ]
        rows.append(cells)
    sizes = ", ".join(f"{name}: {counts.get(name, '?')} inputs" for name in sets)
    return [
        "## Out-of-distribution detection",
        "",
        f"In-distribution = test split; {sizes}.",
        "",
    ] + _table(header, rows)


def _corruption_table(report: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    rows = [
        [m["name"], row.get("accuracy"), row.get("nll"), row.get("ece")]
        for m, row in zip(report["members"], figures["members"], strict=True)
    ]
    rows.append(["**ensemble**", *(figures["ensemble"].get(k) for k in ("accuracy", "nll", "ece"))])
    return _table(["model", "accuracy", "NLL", "ECE"], rows)


def _corruptions(report: dict[str, Any]) -> list[str]:
    corruptions = report.get("corruptions")
    if not corruptions:
        return []
    pooled = corruptions["pooled"]
    lines = ["## Corruptions", "", f"Source: {corruptions['source']}.", ""]
    lines += [
        f"Pooled: the predictions of every corruption x severity as one set of "
        f"{pooled['num_samples']} inputs (the paper's figures):",
        "",
    ]
    lines += _corruption_table(report, pooled)
    lines += ["Mean over corruptions x severities:", ""]
    lines += _corruption_table(report, corruptions["mean"])
    lines += ["Ensemble per corruption and severity:", ""]
    detail = [
        [name, severity, row["accuracy"], row["nll"], row["ece"]]
        for name, by_severity in corruptions["ensemble"].items()
        for severity, row in by_severity.items()
    ]
    return lines + _table(["corruption", "severity", "accuracy", "NLL", "ECE"], detail)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md text."""
    flops = report["flops"]
    lines = [
        f"# Ensemble evaluation: {report['run_dir']}",
        "",
        f"{report['num_members']} member(s) ({report['layout']} layout), "
        f"{report['num_test_samples']} test samples"
        + (f", {report['num_ood_samples']} OoD samples" if report.get("num_ood_samples") else "")
        + ". Ensemble = mean of the members' softmax probabilities; ECE uses 15 equal-width bins.",
        "",
        "## Test set",
        "",
        *_test_table(report),
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
        *_ood_sets(report),
        *_diversity(report),
        *_corruptions(report),
    ]
    plots = report.get("plots", {})
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()] + [""]
    return "\n".join(lines)
