"""`ft-dist bench data` runs end to end (a smoke test on tiny settings; never timed)."""

from __future__ import annotations

import json
from pathlib import Path

from ft_dist.cli import main

TINY = ["--rounds", "1", "--epochs", "1", "--image-size", "16", "--batch-size", "4"]


def test_generated_jpegs_json(capsys) -> None:
    assert main(["bench", "data", "--num-images", "16", "--workers", "0", *TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 16
    assert set(result["images_per_second"]) == {"webdataset", "memory", "imagefolder"}
    assert all(rate > 0 for rate in result["images_per_second"].values())
    assert set(result["ratios"]) == {"vs_memory", "vs_imagefolder"}


def test_existing_shards_table(mnist_root: Path, capsys) -> None:
    args = ["bench", "data", "--shards", str(mnist_root), "--split", "val", "--workers", "1"]
    assert main([*args, *TINY]) == 0
    out = capsys.readouterr().out
    assert "500 images" in out and "imagefolder" in out and "goals met" in out


def test_bad_arguments(capsys) -> None:
    assert main(["bench", "data", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err


def test_missing_shards_dir(tmp_path: Path, capsys) -> None:
    assert main(["bench", "data", "--shards", str(tmp_path / "nowhere"), *TINY]) == 2
    assert "no manifest for split 'train'" in capsys.readouterr().err
