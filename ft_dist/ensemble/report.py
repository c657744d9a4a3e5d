"""Write an evaluation report: report.json, report.md (tables) and plots.

Plots are drawn on `matplotlib.figure.Figure` with the Agg canvas directly, never through
pyplot, so no GUI backend or global pyplot state is involved (works on headless workers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ft_dist.ensemble.report_md import render_markdown
from ft_dist.layout import plots_dir, report_md_path, report_path
from ft_dist.utils import write_text_atomic


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_reliability(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs confidence per bin for the ensemble (bars) and each member (lines)."""
    figure = _new_figure()
    axes = figure.add_subplot()
    ensemble = report["reliability"]["ensemble"]
    edges = ensemble["edges"]
    width = edges[1] - edges[0]
    centers = [lo + width / 2 for lo in edges[:-1]]
    filled = [i for i, count in enumerate(ensemble["counts"]) if count > 0]
    axes.bar(
        [centers[i] for i in filled],
        [ensemble["accuracy"][i] for i in filled],
        width=width * 0.95,
        alpha=0.6,
        label=f"ensemble (ECE {report['ensemble']['test']['ece']:.3f})",
    )
    for name, bins in report["reliability"].items():
        if name == "ensemble":
            continue
        used = [i for i, count in enumerate(bins["counts"]) if count > 0]
        axes.plot(
            [bins["confidence"][i] for i in used],
            [bins["accuracy"][i] for i in used],
            marker="o",
            markersize=3,
            label=name,
        )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.set(xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.set_title(f"Reliability diagram ({report.get('ece_bins', 15)} bins)")
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_layer_density(report: dict[str, Any], path: Path) -> Path:
    """Density of every masked layer as grouped bars, one bar per member."""
    members = report["members"]
    layers = list(members[0]["layer_densities"])
    figure = _new_figure(max(6.0, 0.3 * len(layers) * len(members) ** 0.5 + 2), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(members)
    for index, member in enumerate(members):
        densities = [member["layer_densities"].get(name, math.nan) for name in layers]
        offsets = [i - 0.4 + width * (index + 0.5) for i in range(len(layers))]
        axes.bar(offsets, densities, width=width, label=member["name"])
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize="x-small")
    axes.set(ylabel="density (fraction of active weights)", ylim=(0, 1.05))
    axes.set_title("Per-layer density")
    axes.legend(fontsize="small")
    return _save(figure, path)


def _heatmap(axes: Any, matrix: Sequence[Sequence[float]], labels: list[str], title: str) -> None:
    image = axes.imshow(matrix, cmap="viridis", vmin=0.0)
    top = max((max(row) for row in matrix), default=1.0) or 1.0
    axes.set_xticks(range(len(labels)), labels, rotation=45, fontsize="small")
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            color = "black" if value > 0.6 * top else "white"  # readable on viridis
            axes.text(j, i, f"{value:.3f}", ha="center", va="center", color=color, fontsize=8)
    axes.set_title(title)
    axes.figure.colorbar(image, ax=axes, fraction=0.046)


def plot_disagreement(report: dict[str, Any], path: Path) -> Path:
    """Pairwise prediction disagreement and mask overlap between members."""
    labels = [member["name"] for member in report["members"]]
    figure = _new_figure(10.0, 4.5)
    _heatmap(
        figure.add_subplot(1, 2, 1),
        report["diversity"]["disagreement"],
        labels,
        "Prediction disagreement",
    )
    _heatmap(
        figure.add_subplot(1, 2, 2),
        report["diversity"]["mask_jaccard"],
        labels,
        "Mask overlap (Jaccard)",
    )
    return _save(figure, path)


def plot_accuracy_vs_flops(report: dict[str, Any], path: Path) -> Path:
    """Test accuracy against training FLOPs spent, for each member and the ensemble."""
    figure = _new_figure()
    axes = figure.add_subplot()
    for member in report["members"]:
        flops = member["meta"].get("train_flops")
        if flops is not None:
            axes.scatter([flops], [member["test"]["accuracy"]], label=member["name"])
    flops = report["flops"].get("train_flops")
    if flops is not None:
        axes.scatter(
            [flops], [report["ensemble"]["test"]["accuracy"]], marker="*", s=200, label="ensemble"
        )
    axes.set(xlabel="training FLOPs", ylabel="test accuracy")
    axes.set_title("Accuracy vs training FLOPs")
    if axes.has_data():
        axes.legend(fontsize="small")
    return _save(figure, path)


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    "reliability": plot_reliability,
    "layer_density": plot_layer_density,
    "disagreement": plot_disagreement,
    "accuracy_vs_flops": plot_accuracy_vs_flops,
}


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null for non-finite floats (e.g. diversity of M = 1)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and plots/<name>.png under `out_dir`; return their paths."""
    out = Path(out_dir)
    plots = plots_dir(out)
    plots.mkdir(parents=True, exist_ok=True)
    paths = {name: plot(report, plots / f"{name}.png") for name, plot in PLOTTERS.items()}
    report = {**report, "plots": {name: str(p.relative_to(out)) for name, p in paths.items()}}
    json_path = report_path(out)
    write_text_atomic(json_path, json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    md_path = report_md_path(out)
    write_text_atomic(md_path, render_markdown(report))
    return {"json": json_path, "markdown": md_path, **paths}


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat, namespaced scalars (`ensemble/nll`, `member_1/accuracy`, ...) for trackers."""
    flat: dict[str, float] = {}
    rows = [(m["name"], m) for m in report["members"]] + [("ensemble", report["ensemble"])]
    for name, row in rows:
        for section in ("test", "ood"):
            for key, value in row.get(section, {}).items():
                flat[f"{name}/{key}"] = value
        for key, value in row.get("calibrated", {}).items():
            flat[f"{name}/calibrated_{key}"] = value
    diversity = report["diversity"]
    for key in ("mean_disagreement", "mean_kl", "mean_mask_jaccard"):
        flat[f"diversity/{key}"] = diversity.get(key)
    for key, value in report["flops"].items():
        flat[f"flops/{key}"] = value
    for key, value in report.get("cost", {}).items():
        flat[f"cost/{key}"] = value
    for set_name, row in report["ensemble"].get("ood_sets", {}).items():
        for key, value in row.items():
            flat[f"ensemble/ood/{set_name}/{key}"] = value
    if "corruptions" in report:
        for key, value in report["corruptions"]["mean"]["ensemble"].items():
            flat[f"ensemble/corrupted_{key}"] = value
        for key, value in report["corruptions"]["pooled"]["ensemble"].items():
            flat[f"ensemble/corrupted_pooled_{key}"] = value
        calibrated = report["corruptions"].get("calibrated")
        if calibrated:
            for key, value in calibrated["mean"]["ensemble"].items():
                flat[f"ensemble/corrupted_calibrated_{key}"] = value
    return {
        key: float(v) for key, v in flat.items() if isinstance(v, int | float) and math.isfinite(v)
    }
