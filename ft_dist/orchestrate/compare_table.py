"""The comparison table (the paper's main table in miniature) as Markdown."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("method", "method", None),
    ("accuracy", "accuracy", "{:.4f}"),
    ("nll", "NLL", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("calibrated_nll", "cal. NLL", "{:.4f}"),
    ("calibrated_ece", "cal. ECE", "{:.4f}"),
    ("ood_auroc_entropy", "OoD AUROC", "{:.4f}"),
    ("dee", "DEE", "{:.2f}"),
    ("train_flops_vs_dense", "train FLOPs (× dense)", "{:.3f}×"),
    ("inference_flops_vs_dense", "inference FLOPs (× dense)", "{:.3f}×"),
    ("inference_ms_per_image", "inference ms/image (exported)", "{:.3f}"),
    ("parameters_vs_dense", "parameters (× dense)", "{:.3f}×"),
    ("train_images_per_s", "train images/s", "{:.0f}"),
    ("inference_images_per_s", "inference images/s", "{:.0f}"),
    ("train_seconds", "train time (s)", "{:.0f}"),
    ("wall_seconds", "wall time (s)", "{:.0f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    if key == "dee" and row.get("dee_note"):
        return str(row["dee_note"])  # outside the dense curve: a bound, not a number
    value = row.get(key)
    if value is None:
        return "–"
    return fmt.format(value) if fmt else str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; OoD AUROC scores by predictive entropy; wall time includes Ray start-up.

    cal. = after temperature scaling on the validation split; DEE = deep-ensemble
    equivalent (dense members matching the calibrated NLL); parameters = active weights of
    all members over one dense model; train images/s: images seen / seconds in training
    steps, summed over a variant's runs (one run's throughput); inference images/s: test
    images through every member, as measured by `ft-dist evaluate` on this machine;
    inference ms/image: the `ft-dist export` program (channel-slim members), batch 256, all
    rows timed in one interleaved loop on this machine's CPU.
    """
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, fmt) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def table_notes(rows: list[dict[str, Any]]) -> str:
    """One line under the table: what DEE was measured against."""
    source = next((row.get("dee_source") for row in rows if row.get("dee_source")), None)
    metric = next((row.get("dee_metric") for row in rows if row.get("dee_metric")), "nll")
    figure = "calibrated NLL" if metric == "calibrated_nll" else "NLL (no validation split)"
    if source == "deep_ensemble":
        return (
            f"DEE: dense members a deep ensemble needs for the same {figure}, interpolated on "
            "the deep-ensemble variant's size curve (Ashukha et al., ICLR 2020)."
        )
    if source == "dense":
        return (
            f"DEE against the one dense model only ({figure}): ≤1 or >1; run with "
            "--deep-ensemble for the full curve."
        )
    return "DEE: no dense members in this comparison."
