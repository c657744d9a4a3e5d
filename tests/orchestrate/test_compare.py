"""`ft-dist compare` planning and table (the training itself is exercised by `make compare`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.config import load_config
from ft_dist.orchestrate.compare import add_relative_costs, plan_variants
from ft_dist.orchestrate.compare_table import render_table

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
    assert variants["static_ensemble"].ensemble.method == "pdst"
    assert variants["dst_ensemble"].ensemble.num_members == base.ensemble.num_members
    assert all(cfg.train.output_dir == str(tmp_path) for cfg in variants.values())
    assert {cfg.train.run_name for cfg in variants.values()} == set(variants)


def test_compare_needs_an_edst_config(tmp_path: Path) -> None:
    base = load_config(REPO / "configs" / "demo_dst.yaml")
    with pytest.raises(ValueError, match="EDST config"):
        plan_variants(base, tmp_path)


def test_relative_costs_and_table() -> None:
    rows = [
        {"variant": "dense", "method": "dense", "train_flops": 10.0, "inference_flops": 4.0,
         "dense_forward_flops": 4.0, "accuracy": 0.9, "nll": 0.3, "ece": 0.02},
        {"variant": "edst", "method": "EDST (M=3)", "train_flops": 6.0, "inference_flops": 3.0,
         "dense_forward_flops": 4.0, "accuracy": 0.91, "nll": 0.25, "ece": 0.01,
         "ood_auroc_entropy": 0.99},
    ]  # fmt: skip
    add_relative_costs(rows)
    assert rows[1]["train_flops_vs_dense"] == pytest.approx(0.6)
    assert rows[1]["inference_flops_vs_dense"] == pytest.approx(0.75)
    table = render_table(rows).splitlines()
    assert table[0].startswith("| method | accuracy | NLL | ECE | OoD AUROC")
    assert "| EDST (M=3) | 0.9100 | 0.2500 | 0.0100 | 0.9900 | 0.600× | 0.750× |" in table[3]
    assert "| dense |" in table[2] and "| – |" in table[2]  # no OoD figure: a dash
