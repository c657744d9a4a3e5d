"""`ft-dist compare` planning and table (the training itself is exercised by `make compare`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.config import load_config
from ft_dist.orchestrate.compare import (
    add_deep_ensemble_equivalents,
    add_relative_costs,
    plan_variants,
)
from ft_dist.orchestrate.compare_table import render_table, table_notes

REPO = Path(__file__).resolve().parents[2]


def test_variants_have_matched_budgets(tmp_path: Path) -> None:
    base = load_config(REPO / "configs" / "demo_edst.yaml")
    variants = {v.key: v.cfg for v in plan_variants(base, tmp_path)}
    assert list(variants) == ["dense", "dst", "static_ensemble", "edst", "dst_ensemble"]
    edst = base.ensemble.edst
    single_epochs = edst.exploration_epochs + edst.refinement_epochs
    assert variants["dense"].sparsity.density == 1.0 and not variants["dense"].sparsity.is_dynamic
    assert variants["dst"].sparsity.density == base.sparsity.density
    assert variants["static_ensemble"].sparsity.update == "none"
    for key in ("dense", "dst", "static_ensemble", "dst_ensemble"):
        assert variants[key].num_epochs == single_epochs
    assert variants["edst"].num_epochs == edst.exploration_epochs + 3 * edst.refinement_epochs
    assert variants["static_ensemble"].ensemble.method == "dst_ensemble"
    assert variants["dst_ensemble"].ensemble.num_members == base.ensemble.num_members
    assert all(cfg.train.output_dir == str(tmp_path) for cfg in variants.values())
    assert {cfg.train.run_name for cfg in variants.values()} == set(variants)


def test_compare_needs_an_edst_config(tmp_path: Path) -> None:
    base = load_config(REPO / "configs" / "demo_dst.yaml")
    with pytest.raises(ValueError, match="EDST config"):
        plan_variants(base, tmp_path)


def test_deep_ensemble_variant(tmp_path: Path) -> None:
    base = load_config(REPO / "configs" / "demo_edst.yaml")
    variants = {v.key: v.cfg for v in plan_variants(base, tmp_path, deep_ensemble=True)}
    deep = variants["deep_ensemble"]
    assert deep.sparsity.density == 1.0 and deep.ensemble.method == "dst_ensemble"
    assert deep.ensemble.num_members == base.ensemble.num_members
    assert deep.num_epochs == variants["dense"].num_epochs
    assert "deep_ensemble" not in {v.key for v in plan_variants(base, tmp_path)}


def _row(variant: str, method: str, **figures: float | None) -> dict:
    base = {"variant": variant, "method": method, "train_flops": 10.0, "inference_flops": 4.0,
            "dense_forward_flops": 4.0, "accuracy": 0.9, "nll": 0.3, "ece": 0.02,
            "calibrated_nll": 0.28, "parameters": 100, "dense_parameters": 100}  # fmt: skip
    return {**base, **figures}


def test_relative_costs_and_table() -> None:
    rows = [
        _row("dense", "dense", calibrated_nll=None, calibrated_ece=None),
        _row("edst", "EDST (M=3)", train_flops=6.0, inference_flops=3.0, accuracy=0.91,
             nll=0.25, ece=0.01, calibrated_nll=0.24, calibrated_ece=0.008,
             ood_auroc_entropy=0.99, parameters=60, train_images_per_s=1234.4,
             inference_images_per_s=5000.0),
    ]  # fmt: skip
    add_relative_costs(rows)
    assert rows[1]["train_flops_vs_dense"] == pytest.approx(0.6)
    assert rows[1]["inference_flops_vs_dense"] == pytest.approx(0.75)
    assert rows[1]["parameters_vs_dense"] == pytest.approx(0.6)
    add_deep_ensemble_equivalents(rows)  # the dense row has no calibrated NLL: raw NLL
    assert rows[1]["dee_metric"] == "nll" and rows[1]["dee_source"] == "dense"
    assert rows[1]["dee_note"] == ">1" and rows[0]["dee_note"] == "≤1"
    table = render_table(rows).splitlines()
    assert table[0].startswith(
        "| method | accuracy | NLL | ECE | cal. NLL | cal. ECE | OoD AUROC | DEE | train FLOPs"
    )
    assert table[0].endswith(
        "| parameters (× dense) | train images/s | inference images/s | train time (s) "
        "| wall time (s) |"
    )
    assert table[3].startswith(
        "| EDST (M=3) | 0.9100 | 0.2500 | 0.0100 | 0.2400 | 0.0080 | 0.9900 | >1 | 0.600× "
        "| 0.750× | – | 0.600× | 1234 | 5000 |"
    )
    assert "| dense |" in table[2] and "| – |" in table[2]  # no OoD figure: a dash
    assert "one dense model only" in table_notes(rows)


def test_deep_ensemble_equivalent_from_the_dense_curve() -> None:
    rows = [
        _row("dense", "dense", calibrated_nll=0.50),
        _row("edst", "EDST", calibrated_nll=0.42, nll=0.46),
        _row("dst_ensemble", "DST Ensemble", calibrated_nll=0.30),
        _row("deep_ensemble", "deep ensemble", calibrated_nll=0.40,
             size_curve_calibrated_nll=[0.48, 0.44, 0.40], size_curve_nll=[0.5, 0.46, 0.43]),
    ]  # fmt: skip
    add_deep_ensemble_equivalents(rows)
    dee = {row["variant"]: (row["dee"], row["dee_note"]) for row in rows}
    # 0.42 lies halfway between 2 members (0.44) and 3 members (0.40): 2.5.
    assert dee["edst"] == (pytest.approx(2.5), None)
    assert dee["deep_ensemble"] == (pytest.approx(3.0), None)
    assert dee["dense"] == (1.0, "≤1") and dee["dst_ensemble"] == (3.0, ">3")
    assert all(row["dee_source"] == "deep_ensemble" for row in rows)
    assert "deep-ensemble variant's size curve" in table_notes(rows)
    rows[1]["calibrated_nll"] = None  # one row without calibration: raw NLL for every row
    add_deep_ensemble_equivalents(rows)
    assert rows[1]["dee_metric"] == "nll" and rows[1]["dee"] == pytest.approx(2.0)  # 0.46


def test_channel_level_edst_variant(tmp_path: Path) -> None:
    base = load_config(REPO / "configs" / "demo_edst.yaml")
    settings = {"channel_sparsity": 0.5, "channel_allocation": "uniform"}  # the default end
    variants = {v.key: v.cfg for v in plan_variants(base, tmp_path, channels=settings)}
    assert list(variants)[3:5] == ["edst", "edst_channels"]
    channels = variants["edst_channels"]
    assert channels.sparsity.channel_sparsity == 0.5 and channels.sparsity.channel_end_step is None
    assert channels.sparsity.channel_allocation == "uniform"
    assert channels.num_epochs == variants["edst"].num_epochs
    assert variants["edst"].sparsity.channel_sparsity == 0.0
    assert "inference ms/image" in render_table([])


def test_channel_row_takes_per_group_fractions_and_names_them() -> None:
    from ft_dist.cli.compare import group_fractions

    base = load_config(REPO / "configs" / "demo_edst.yaml")
    settings = {"channel_sparsity": 0.5, "channel_end_step": 81, "channel_allocation": "uniform"}
    settings["channel_group_sparsity"] = group_fractions(["features.0=0.75"])
    (channels,) = [
        v
        for v in plan_variants(base, Path("."), channels=settings)
        if v.cfg.sparsity.channel_sparsity
    ]
    assert channels.cfg.sparsity.channel_group_sparsity == {"features.0": 0.75}
    assert channels.label == "channel-level EDST (M=3, 0.5 of channels, features.0 0.75)"
    for bad in (["features.0"], ["features.0=most"], ["=0.5"]):
        with pytest.raises(ValueError, match="--channel-group-sparsity: .* is not GROUP=FRACTION"):
            group_fractions(bad)
