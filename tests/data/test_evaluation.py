"""The evaluation stream in one process: OoD roots, eval transforms, spawn-safe sources."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from ft_dist.data import DataConfig, DataError
from ft_dist.data.evaluation import EvalStream, _EvalSource, gather_by_index
from ft_dist.data.pipeline import TrainStream, check_dataset
from tests.data.helpers import make_split


def collect(stream: EvalStream) -> dict[str, torch.Tensor]:
    images, labels, indices = zip(*stream, strict=True)
    values = {"images": torch.cat(images), "labels": torch.cat(labels)}
    return gather_by_index(values, torch.cat(indices), stream.num_samples)


def test_ood_set_through_the_training_recipe(mnist_root: Path) -> None:
    cfg = DataConfig(root=str(mnist_root), loader_workers=2, eval_batch_size=100)
    ood = collect(EvalStream(cfg, split="ood"))
    test = collect(EvalStream(cfg, split="test"))
    assert ood["images"].shape == (1000, 1, 28, 28)
    assert bool((ood["labels"] == -1).all())
    assert test["labels"].bincount().tolist() == [100] * 10
    # Same normalisation: both sets land on the same scale, not on raw [0, 1] pixels.
    assert test["images"].min() < -0.3 and ood["images"].min() < -0.3


def test_another_root_is_read_with_this_runs_recipe(tmp_path: Path, mnist_root: Path) -> None:
    make_split(tmp_path, "ood", [5, 4], size=40, mode="RGB", recipe="imagenet")
    manifest = tmp_path / "ood" / "manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "labeled": False, "classes": []}))
    cfg = DataConfig(root=str(mnist_root), loader_workers=0)
    out = collect(EvalStream(cfg, split="ood", root=str(tmp_path)))
    assert out["images"].shape == (9, 1, 28, 28)  # resized and grayscale like MNIST


def test_imagenet_eval_transform_is_deterministic(tmp_path: Path) -> None:
    make_split(tmp_path, "val", [6, 5], size=40, fmt="JPEG", mode="RGB", recipe="imagenet")
    make_split(tmp_path, "train", [6, 5], size=40, fmt="JPEG", mode="RGB", recipe="imagenet")
    cfg = DataConfig(root=str(tmp_path), image_size=32, loader_workers=0, eval_batch_size=4)
    first = collect(EvalStream(cfg, split="val"))
    assert first["images"].shape == (11, 3, 32, 32)
    assert torch.equal(first["images"], collect(EvalStream(cfg, split="val"))["images"])


def test_split_with_other_classes_is_refused(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [4, 4], num_classes=3)
    make_split(tmp_path, "val", [4], num_classes=4)
    cfg = DataConfig(root=str(tmp_path), test_split=None, loader_workers=0)
    with pytest.raises(ValueError, match="'val' .* different class list"):
        EvalStream(cfg, split="val")
    with pytest.raises(ValueError, match="'val' .* different class list"):
        check_dataset(cfg, world_size=1)


def test_sources_pickle_for_spawned_workers(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [6, 6])
    cfg = DataConfig(root=str(tmp_path), batch_size_per_worker=4, loader_workers=0)
    source = TrainStream(cfg, rank=0, world_size=1).epoch(0).source
    copy = pickle.loads(pickle.dumps(source))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(iter(source), iter(copy), strict=True))
    eval_source = pickle.loads(pickle.dumps(_EvalSource(EvalStream(cfg, split="train"))))
    assert sum(len(batch[2]) for batch in eval_source) == 12


def test_evaluation_never_skips_corrupt_samples(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [4, 4], corrupt=frozenset({5}))
    cfg = DataConfig(root=str(tmp_path), loader_workers=0, skip_corrupt=True)
    with pytest.raises(DataError, match="shard-000001.tar sample 000000005: cannot decode"):
        collect(EvalStream(cfg, split="train"))


def test_raw_stream_is_the_training_stream_before_normalisation(mnist_root: Path) -> None:
    cfg = DataConfig(root=str(mnist_root), loader_workers=0, eval_batch_size=250)
    normalised = collect(EvalStream(cfg, split="test"))["images"]
    raw_stream = EvalStream(cfg, split="test", normalize=False)
    raw = collect(raw_stream)["images"]
    assert raw.min() >= 0.0 and raw.max() <= 1.0 and raw_stream.sample_shape == (1, 28, 28)
    mean, std = torch.tensor(raw_stream.mean), torch.tensor(raw_stream.std)
    assert torch.allclose((raw - mean.view(-1, 1, 1)) / std.view(-1, 1, 1), normalised, atol=1e-6)


def test_any_shard_set_reads_as_unlabelled(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [4, 4], num_classes=3)
    make_split(tmp_path, "other", [5], num_classes=7)  # labelled, with classes of its own
    cfg = DataConfig(root=str(tmp_path), loader_workers=0)
    with pytest.raises(ValueError, match="different class list"):
        EvalStream(cfg, split="other")
    out = collect(EvalStream(cfg, split="other", labels=False))
    assert out["labels"].tolist() == [-1] * 5
