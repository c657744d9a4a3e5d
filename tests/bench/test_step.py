"""`ft-dist bench step` runs end to end and reports what it promises (timings are not checked)."""

import json

from ft_dist.cli import main


def test_bench_step_json_reports_ratio_and_update_cost(capsys):
    argv = ["bench", "step", "--model", "small-cnn", "--in-channels", "1", "--image-size", "28"]
    argv += ["--batch-size", "8", "--steps", "2", "--warmup", "1", "--updates", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sparse_dense_ratio"] == result["sparse_step_s"] / result["dense_step_s"]
    assert result["mask_update_in_steps"] == result["mask_update_s"] / result["sparse_step_s"]
    assert abs(result["global_density"] - 0.2) < 0.01


def test_bench_step_table(capsys):
    argv = ["bench", "step", "--model", "small-cnn", "--in-channels", "1", "--image-size", "28"]
    assert (
        main([*argv, "--batch-size", "4", "--steps", "1", "--warmup", "0", "--updates", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "sparse / dense" in out and "mask update / sparse step" in out
