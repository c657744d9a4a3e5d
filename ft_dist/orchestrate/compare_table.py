"""The comparison table (the paper's main table in miniature) as Markdown."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("method", "method", None),
    ("accuracy", "accuracy", "{:.4f}"),
    ("nll", "NLL", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("ood_auroc_entropy", "OoD AUROC", "{:.4f}"),
    ("train_flops_vs_dense", "train FLOPs (× dense)", "{:.3f}×"),
    ("inference_flops_vs_dense", "inference FLOPs (× dense)", "{:.3f}×"),
    ("train_seconds", "train time (s)", "{:.0f}"),
    ("wall_seconds", "wall time (s)", "{:.0f}"),
)


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "–"
    return fmt.format(value) if fmt else str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; OoD AUROC scores by predictive entropy; wall time includes Ray start-up."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), fmt) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)
