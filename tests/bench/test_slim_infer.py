"""`ft-dist bench infer --export DIR / --synthetic MODEL` and the `infer_slim` GPU check, on
tiny sizes (they check what is measured and reported, never how fast)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ft_dist.bench.gpu_checks import SIZES
from ft_dist.bench.slim_infer import check_infer_slim
from ft_dist.cli import main
from tests.export.test_export import mnist_root  # noqa: F401  (fixture)
from tests.export.test_export_slim import slim_export  # noqa: F401  (fixture)
from tests.train.conftest import tiny_mnist  # noqa: F401  (fixture)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_export_mode_times_the_program_against_one_dense_model(slim_export, capsys) -> None:  # noqa: F811
    _, out, _ = slim_export
    argv = ["bench", "infer", "--export", str(out), "--batch-size", "4", "--repeats", "1"]
    assert main([*argv, "--json"]) == 0
    (row,) = _json(capsys)["rows"]
    assert row["members"] == 3 and row["model"] == "small-cnn" and row["batch_size"] == 4
    assert row["ensemble_images_per_s"] > 0 and row["dense_images_per_s"] > 0
    ratio = row["ensemble_images_per_s"] / row["dense_images_per_s"]
    assert abs(ratio - row["ensemble_vs_dense"]) < 1e-9
    assert max(row["member_parameters"]) < row["dense_parameters"]
    assert main(argv) == 0
    assert "ens/dense" in capsys.readouterr().out


def test_export_mode_times_packed_dense_and_separate_per_batch(slim_export, capsys) -> None:  # noqa: F811
    _, out, _ = slim_export
    argv = ["bench", "infer", "--export", str(out), "--batch-sizes", "2", "3", "--repeats", "1"]
    assert main([*argv, "--json"]) == 0
    rows = _json(capsys)["rows"]
    assert [row["batch_size"] for row in rows] == [2, 3]
    for row in rows:
        assert row["program"] == "packed"
        ratio = row["separate_images_per_s"] / row["dense_images_per_s"]
        assert abs(ratio - row["separate_vs_dense"]) < 1e-9
    assert main(argv) == 0
    assert "sep/dense" in capsys.readouterr().out


def test_synthetic_mode_cuts_each_member_by_the_channel_sparsity(capsys) -> None:
    argv = ["bench", "infer", "--synthetic", "small-cnn", "--synthetic-image-size", "28"]
    argv += ["--channel-sparsity", "0", "0.5", "--members", "2", "--batch-size", "2"]
    assert main([*argv, "--repeats", "1", "--json"]) == 0
    rows = _json(capsys)["rows"]
    assert [r["channel_sparsity"] for r in rows] == [0.0, 0.5]
    assert all(r["program"] == "packed" and r["separate_vs_dense"] > 0 for r in rows)
    unstructured, slim = rows
    assert unstructured["member_parameters"] == [unstructured["dense_parameters"]] * 2
    assert all(p < slim["dense_parameters"] for p in slim["member_parameters"])


def test_gpu_check_runs_on_the_cpu_at_the_tiny_size() -> None:
    result = check_infer_slim(torch.device("cpu"), SIZES["tiny"], Path("."))
    assert result["passed"] is True and result["bf16"] is False
    assert result["ensemble_vs_dense"] > 0 and result["member_parameters_vs_dense"] < 1
    assert list(result["goals"]) == ["3 slim members >= 1.0 x one dense model's images/s"]


def test_programs_are_timed_in_one_interleaved_loop(slim_export) -> None:  # noqa: F811
    from ft_dist.export.timing import time_programs

    _, out, _ = slim_export
    times = time_programs({"a": out, "b": out}, batch_size=4, repeats=2)
    assert set(times) == {"a", "b"} and all(ms > 0 for ms in times.values())


def test_channel_curve_plans_edst_runs_and_a_dense_reference(tiny_mnist, tmp_path) -> None:  # noqa: F811
    from ft_dist.bench.channels import variant_configs
    from tests.train.conftest import tiny_config

    edst = {"method": "edst", "num_members": 2}
    edst["edst"] = {"exploration_epochs": 2, "refinement_epochs": 1}
    base = tiny_config(tiny_mnist, tmp_path, ensemble=edst)  # 8 steps per epoch
    runs = variant_configs(base, tmp_path / "curve", [0.0, 0.5], dense=True, masked=True)
    names = [name for name, _, _, _ in runs]
    assert names == ["edst_channels_00", "edst_channels_50", "edst_channels_50_masked", "dense"]
    _, _, unstructured, no_twin = runs[0]
    _, _, channels, twin = runs[1]
    _, kind, masked, _ = runs[2]
    _, _, dense, _ = runs[3]
    assert unstructured.sparsity.channel_sparsity == 0.0 and no_twin is None
    assert channels.sparsity.channel_sparsity == 0.5 and channels.sparsity.channel_end_step == 16
    assert channels.sparsity.channel_shrink and twin == "edst_channels_50_masked"
    assert kind == "masked" and not masked.sparsity.channel_shrink
    assert masked.sparsity.channel_end_step == 16
    assert dense.sparsity.density == 1.0 and dense.ensemble.method == "single"
    assert dense.num_epochs == 2 + base.ensemble.edst.refinement_epochs
    ends = variant_configs(base, tmp_path / "c", [0.5], dense=False, end_fractions=(1.0, 0.5))
    assert [(n, c.sparsity.channel_end_step) for n, _, c, _ in ends] == [
        ("edst_channels_50", 16),
        ("edst_channels_50_end50", 8),
    ]


def test_training_ratios_divide_by_the_masked_twin_and_the_dense_run() -> None:
    from ft_dist.bench.channels import add_training_ratios

    rows = [
        {"channel_sparsity": 0.5, "train_seconds": 6.0, "masked_twin": "m"},
        {"channel_sparsity": 0.0, "train_seconds": 9.0, "masked_twin": None},
        {"channel_sparsity": None, "train_seconds": 8.0, "masked_twin": None},
    ]
    add_training_ratios(rows, {"m": {"train_seconds": 10.0}})
    assert rows[0]["train_vs_masked"] == 0.6 and rows[0]["train_vs_dense"] == 0.75
    assert rows[1]["train_vs_masked"] is None and rows[1]["train_vs_dense"] == 9.0 / 8.0


def test_train_step_of_the_slim_network_against_the_masked_one(slim_export) -> None:  # noqa: F811
    from ft_dist.bench.slim_infer import train_step_times

    run, _, _ = slim_export
    result = train_step_times(run / "tickets" / "ticket_01.pt", batch_size=4, repeats=1)
    assert result["masked_step_ms"] > 0 and result["slim_step_ms"] > 0
    ratio = result["slim_step_ms"] / result["masked_step_ms"]
    assert abs(result["slim_vs_masked_step_time"] - ratio) < 1e-9


def test_channel_curve_table_shows_the_removed_fraction_and_group_fractions() -> None:
    from ft_dist.bench.channels import format_table

    row = {
        "run": "edst_channels_50", "channel_sparsity": 0.5, "removed_fraction": 0.5357,
        "accuracy": 0.97, "nll": 0.1, "ece": 0.01, "member_parameters": [50, 40],
        "dense_parameters": 200, "ensemble_vs_dense": 1.1, "ensemble_ms_per_image": 0.05,
        "train_step_slim_vs_masked": 0.4, "kept_channels": {"features.0": 8, "features.4": 32},
        "train_seconds": 6.0, "train_vs_masked": 0.6, "train_vs_dense": 0.75, "channel_end_step": 81,
        "group_channels": {"features.0": 32, "features.4": 64},
        "group_sparsity": {"features.0": 0.75},
    }  # fmt: skip
    table = format_table({"torch_threads": 2, "rows": [row]})
    assert "0.536" in table and "0.250x" in table  # removed fraction; largest member / dense
    assert "features.0 8/32, features.4 32/64" in table
    assert "0.60x" in table and "0.75x" in table  # train ÷ masked twin, ÷ dense run
    assert "channel_group_sparsity: {'features.0': 0.75}" in table
