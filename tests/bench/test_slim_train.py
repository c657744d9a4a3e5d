"""`ft-dist bench train-slim` and the `train_slim` GPU check, on the CPU at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ft_dist.bench.gpu_checks import SIZES
from ft_dist.bench.slim_train import check_train_slim, masked_and_slim, projection
from ft_dist.cli import main


def test_the_slim_network_is_the_masked_one_cut() -> None:
    masked, slim = masked_and_slim("small-cnn", 10, 1, 28, 0.2, 0.5)
    assert sum(p.numel() for p in slim.parameters()) < 0.5 * sum(
        p.numel() for p in masked.parameters()
    )
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(slim.eval()(images), masked.eval()(images), rtol=1e-4, atol=1e-5)


def test_projection_prices_the_masked_epochs_at_one_and_the_rest_at_the_ratio() -> None:
    result = projection(0.5, t_ex=150, t_re=100, members=3, end_fraction=0.5)
    assert result["masked_edst_vs_dense"] == pytest.approx(450 / 250)
    assert result["shrunk_edst_vs_dense"] == pytest.approx((75 + 375 * 0.5) / 250)


def test_gpu_check_row_on_the_cpu() -> None:
    result = check_train_slim(torch.device("cpu"), SIZES["tiny"], Path("."))
    assert result["passed"] and result["masked_step_ms"] > 0 and result["slim_step_ms"] > 0
    assert set(result["goals"]) == {"slim step <= 0.8 x masked step"}


def test_cli_prints_json_rows_with_a_projection_for_paper_models(capsys) -> None:
    argv = ["bench", "train-slim", "--model", "small-cnn", "--repeats", "1", "--batch-size", "2"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    (row,) = result["rows"]
    assert row["model"] == "small-cnn" and row["slim_vs_masked_step_time"] > 0
    assert "shrunk_edst_vs_dense" not in row  # no paper config for it
