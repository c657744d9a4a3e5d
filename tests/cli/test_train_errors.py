"""`ft-dist train` with bad input: one line naming the file/key and the fix, before any Ray
worker starts (nothing here starts Ray; tests/train/test_failures_ray.py covers the cluster).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import ray
import yaml

from ft_dist.cli import main
from tests.data.helpers import make_split


def write_config(tmp_path: Path, root: Path, **train) -> Path:
    path = tmp_path / "cfg.yaml"
    config = {
        "model": {"name": "small-cnn"},
        "data": {"root": str(root), "batch_size_per_worker": 8, "loader_workers": 0},
        "sparsity": {"density": 0.2},
        "train": {"epochs": 1, "output_dir": str(tmp_path / "runs"), **train},
        "tracking": {"wandb": "disabled"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def train_error(capsys, config: Path, *overrides: str) -> str:
    """Run `ft-dist train`; it must fail with exit 2, one stderr line, and no Ray started."""
    assert main(["train", str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ft-dist train: error: ") and "\n" not in err, err
    assert not ray.is_initialized()
    return err


def test_missing_data_root(tmp_path: Path, capsys) -> None:
    err = train_error(capsys, write_config(tmp_path, tmp_path / "nowhere"))
    assert f"no manifest for split 'train' at {tmp_path}/nowhere/train/manifest.json" in err
    assert "point data.root at a dir written by `ft-dist shards" in err


@pytest.mark.parametrize("split", ["val", "test"])
def test_missing_eval_split_is_found_before_training(
    tmp_path: Path, dataset: Path, capsys, split: str
) -> None:
    (dataset / split / "manifest.json").unlink()
    err = train_error(capsys, write_config(tmp_path, dataset))
    others = sorted({"train", "val", "test"} - {split})
    assert err.endswith(
        f"data.{split}_split='{split}': no such split under {dataset} (splits there: "
        f"{others}); set data.{split}_split to one of them or null, or write it with "
        f"`ft-dist shards ... --split {split}`"
    )


def test_eval_split_without_labels(tmp_path: Path, dataset: Path, capsys) -> None:
    manifest = dataset / "test" / "manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "labeled": False}))
    err = train_error(capsys, write_config(tmp_path, dataset))
    assert "data.test_split='test' names a split without labels" in err


def test_shard_edited_in_place_is_caught_with_the_default_verify(
    tmp_path: Path, dataset: Path, capsys
) -> None:
    shard = dataset / "train" / "shard-000002.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cls"))
    with open(shard, "r+b") as stream:  # one label digit: same size, new content
        stream.seek(member.offset_data)
        stream.write(b"9")
    err = train_error(capsys, write_config(tmp_path, dataset))
    assert f"shard {shard} does not match the sha256 in its manifest" in err
    assert "rewrite the split with `ft-dist shards`" in err


def test_manifest_digest_that_no_longer_matches(tmp_path: Path, dataset: Path, capsys) -> None:
    manifest = dataset / "val" / "manifest.json"
    content = json.loads(manifest.read_text())
    content["shards"][0]["sha256"] = "f" * 64
    manifest.write_text(json.dumps(content))
    err = train_error(capsys, write_config(tmp_path, dataset))
    assert f"shard {dataset}/val/shard-000000.tar does not match the sha256" in err


def test_too_few_shards_for_the_workers(tmp_path: Path, dataset: Path, capsys) -> None:
    err = train_error(capsys, write_config(tmp_path, dataset), "train.num_workers=8")
    assert "has 4 shards, fewer than ranks × loader workers = 8 × 1" in err


def test_grad_accum_beyond_the_epoch(tmp_path: Path, dataset: Path, capsys) -> None:
    err = train_error(capsys, write_config(tmp_path, dataset, grad_accum_steps=9))
    assert "train.grad_accum_steps=9 exceeds the 8 batches per epoch" in err


def test_model_channels_that_do_not_match_the_data(tmp_path: Path, dataset: Path, capsys) -> None:
    err = train_error(capsys, write_config(tmp_path, dataset), "model.in_channels=3")
    assert "model.in_channels=3 but recipe 'mnist' feeds 1-channel images" in err


def test_output_dir_that_cannot_be_created(tmp_path: Path, dataset: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    err = train_error(
        capsys, write_config(tmp_path, dataset), f"train.output_dir={tmp_path}/file/runs"
    )
    assert f"train.output_dir: cannot create {tmp_path}/file/runs/run" in err


def test_config_path_that_is_a_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("{}")
    err = train_error(capsys, tmp_path / "configs")
    assert f"config {tmp_path}/configs is a directory, not a file" in err
    assert f"e.g. {tmp_path}/configs/a.yaml" in err


@pytest.mark.ray
@pytest.mark.slow
def test_more_workers_than_the_machine_has_fail_at_once(tmp_path: Path) -> None:
    """A fresh `ft-dist train` process starts a local Ray cluster (this machine's CPUs) and
    stops before any worker, instead of waiting for 64 of them forever."""
    for split, sizes in (("train", [8] * 64), ("val", [8]), ("test", [8])):
        make_split(tmp_path / "data", split, sizes)  # enough shards for 64 ranks
    config = write_config(tmp_path, tmp_path / "data", num_workers=64)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    ft_dist = Path(sys.executable).with_name("ft-dist")
    done = subprocess.run(
        [str(ft_dist), "train", str(config)], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"ft-dist train: error: train.num_workers=64 workers x 1 CPU each do not fit the Ray "
        r"cluster, which has 1 node\(s\) with (\d+) CPU in all \(room for \1\); set "
        r"train.num_workers=\1 \(or fewer\), or add nodes",
        line,
    ), line


def test_channel_sparsity_on_a_model_whose_channels_cannot_be_cut(
    tmp_path: Path, dataset: Path, capsys
) -> None:
    # torchvision's ShuffleNet: torch-pruning cannot trace its channel shuffle (the workers
    # used to fail there with a ZeroDivisionError, retried by Ray).
    overrides = (
        "model.name=torchvision:shufflenet_v2_x0_5",
        "data.image_size=64",
        "sparsity.channel_sparsity=0.5",
        "sparsity.channel_end_step=4",
    )
    err = train_error(capsys, write_config(tmp_path, dataset), *overrides)
    assert "this model's channels cannot be cut" in err and "channel_sparsity=0" in err


def test_a_density_that_starves_a_layer(tmp_path: Path, dataset: Path, capsys) -> None:
    err = train_error(capsys, write_config(tmp_path, dataset), "sparsity.density=1e-6")
    assert "sparsity.density=1e-06 leaves" in err and "use sparsity.density >= " in err
