"""A sweep's results: one row per trial, best first, as CSV and markdown, and a plot of the
metric against each swept key (matplotlib's Agg canvas, as ensemble/report.py draws).

A trial's metric is its run's final value (summary.json, the last epoch's weights) when it
finished, else the last value Ray Tune received (a trial ASHA stopped early). A DST
Ensemble trial shows the mean over its members (each member is a run of its own; evaluate
the trial's directory with `ft-dist evaluate` for the ensemble's metrics).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_dist.layout import (
    run_dir,
    summary_path,
    sweep_plot_path,
    sweep_results_csv,
    sweep_results_md,
)
from ft_dist.orchestrate.sweep_plan import SweepPlan, Trial
from ft_dist.orchestrate.sweep_space import canonical, is_log_scale
from ft_dist.utils import write_bytes_atomic, write_text_atomic


@dataclass(frozen=True)
class Reported:
    """What Ray Tune last received from one of its trials (a run or a member)."""

    metrics: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class Row:
    trial: str
    values: dict[str, Any]
    metric: float | None
    status: str  # finished, stopped at epoch E, failed: ..., not run
    epochs: float | None
    run: Path


def collect_rows(plan: SweepPlan, reported: dict[str, Reported]) -> list[Row]:
    """Each trial's row, best first (trials without the metric last)."""
    rows = [trial_row(plan, trial, reported) for trial in plan.trials]
    sign = 1.0 if plan.mode == "min" else -1.0
    return sorted(rows, key=lambda row: (row.metric is None, sign * (row.metric or 0.0)))


def trial_row(plan: SweepPlan, trial: Trial, reported: dict[str, Reported]) -> Row:
    metrics, epochs, states = [], [], []
    for key, cfg in trial.runs.items():
        summary = read_summary(run_dir(cfg.train))
        last = reported.get(key)
        if summary is not None and summary.get("epochs") == cfg.num_epochs:
            metrics.append(summary.get("metrics", {}).get(plan.metric))
            epochs.append(float(summary["epochs"]))
            states.append("finished")
        elif last is not None and last.error is not None:
            states.append(f"failed: {last.error}")
        elif last is not None and plan.metric in last.metrics:
            metrics.append(last.metrics[plan.metric])
            epochs.append(float(last.metrics.get("epoch", 0.0)))
            states.append(f"stopped at epoch {epochs[-1]:g}")
        else:
            states.append("not run")
    found = [float(m) for m in metrics if m is not None and math.isfinite(float(m))]
    metric = sum(found) / len(found) if found and len(found) == len(trial.runs) else None
    if len(trial.runs) == 1:
        status = states[0]
    else:
        done = states.count("finished")
        failed = next((s for s in states if s.startswith("failed")), None)
        status = failed or ("finished" if done == len(states) else f"{done}/{len(states)} finished")
    return Row(trial.name, trial.values, metric, status, max(epochs, default=None), trial.dir)


def read_summary(run: Path) -> dict[str, Any] | None:
    path = summary_path(run)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the table
def metric_header(plan: SweepPlan) -> str:
    return f"{plan.metric} (mean of members)" if plan.separate_members else plan.metric


def table(plan: SweepPlan, rows: list[Row]) -> list[list[str]]:
    """Header, then one line per row (best first)."""
    head = ["rank", "trial", *plan.keys, metric_header(plan), "status", "epochs", "run"]
    lines = [head]
    for rank, row in enumerate(rows, 1):
        metric = "" if row.metric is None else f"{row.metric:.4f}"
        epochs = "" if row.epochs is None else f"{row.epochs:g}"
        values = [show(row.values.get(key)) for key in plan.keys]
        lines.append([str(rank), row.trial, *values, metric, row.status, epochs, str(row.run)])
    return lines


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else canonical(value)


def markdown(lines: list[list[str]]) -> str:
    """The table without its run column (the trial names the directory)."""
    cells = [line[:-1] for line in lines]
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells[1:]]
    return "\n".join(out) + "\n"


def write_results(plan: SweepPlan, rows: list[Row]) -> dict[str, Path]:
    """SWEEP_DIR/results.csv, results.md and plot.png; returns their paths."""
    lines = table(plan, rows)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(lines)
    written = {
        "csv": write_text_atomic(sweep_results_csv(plan.dir), text.getvalue()),
        "markdown": write_text_atomic(sweep_results_md(plan.dir), markdown(lines)),
    }
    if plan.keys:
        written["plot"] = write_bytes_atomic(sweep_plot_path(plan.dir), plot_png(plan, rows))
    return written


# --------------------------------------------------------------------------- the plot
def plot_png(plan: SweepPlan, rows: list[Row]) -> bytes:
    """The metric against each swept key, one panel per key: filled dots for finished
    trials, hollow ones for trials stopped early."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = plan.keys
    figure = Figure(figsize=(max(5.0, 4.0 * len(keys)), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    scored = [row for row in rows if row.metric is not None]
    for axis, key in zip(axes, keys, strict=True):
        values = [row.values[key] for row in scored]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = [float(v) for v in values]
            dim = plan.dims.get(key)
            if (dim is not None and dim.kind == "loguniform") or (values and is_log_scale(values)):
                axis.set_xscale("log")
        else:  # categories, in the order first seen
            names = list(dict.fromkeys(show(v) for v in values))
            xs = [float(names.index(show(v))) for v in values]
            axis.set_xticks(range(len(names)), names, rotation=20)
        for x, row in zip(xs, scored, strict=True):
            finished = row.status == "finished"
            axis.scatter(
                [x], [row.metric], s=36, color="C0", facecolors="C0" if finished else "none"
            )
        axis.set_xlabel(key)
        axis.set_ylabel(metric_header(plan))
        axis.grid(alpha=0.3)
    stopped = any(row.status.startswith("stopped") for row in scored)
    note = " (hollow: stopped early)" if stopped else ""
    figure.suptitle(f"{plan.name}: {plan.metric} per trial{note}", fontsize=10)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()
