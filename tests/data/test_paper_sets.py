"""`ft-dist shards cifar|svhn` on tiny files in the official formats (tests/data/formats.py)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ft_dist.cli import main
from ft_dist.data import DataConfig, describe, read_manifest
from ft_dist.data.reader import iter_shard
from tests.data.formats import CIFAR10_NAMES, write_cifar_tarball, write_svhn_mat


def split_pixels(root: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """Every stored image (decoded PNG) and label of a split, in manifest order."""
    manifest = read_manifest(root, split)
    images, labels = [], []
    for index in range(manifest.num_shards):
        for _, _, sample in iter_shard(manifest.shard_url(index), manifest.shards[index]):
            images.append(np.asarray(Image.open(io.BytesIO(sample["png"]))))
            if "cls" in sample:
                labels.append(int(sample["cls"]))
    return np.stack(images), labels


def as_images(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("kind", "recipe"), [("cifar10", "cifar"), ("cifar100", "cifar100")])
def test_cifar_tarball_splits_like_freetickets(tmp_path: Path, kind: str, recipe: str) -> None:
    src = tmp_path / f"{kind}.tar.gz"
    published = write_cifar_tarball(src, kind, per_batch=4, num_test=6)  # 20 train images
    out = tmp_path / "shards"
    argv = ["shards", "cifar", "--src", str(src), "--out", str(out), "--val-size", "3"]
    assert main([*argv, "--shard-size", "7"]) == 0
    train, train_labels = split_pixels(out, "train")
    val, val_labels = split_pixels(out, "val")
    test, test_labels = split_pixels(out, "test")
    rows = as_images(published["train_rows"])
    assert np.array_equal(train, rows[:17]) and np.array_equal(val, rows[17:])  # exact pixels
    assert train_labels + val_labels == published["train_labels"].tolist()
    assert np.array_equal(test, as_images(published["test_rows"]))
    assert test_labels == published["test_labels"].tolist()
    manifest = read_manifest(out, "train")
    assert manifest.classes == tuple(CIFAR10_NAMES) and manifest.recipe == recipe
    assert manifest.num_shards == 3 and manifest.extra["pixel_stats"]["mode"] == "RGB"
    info = describe(DataConfig(root=str(out)))
    expected_mean = {"cifar": 0.4914, "cifar100": 0.5071}[recipe]
    assert info.resolved_recipe.mean[0] == expected_mean and info.image_size == 32


def _rewrite_member(src: Path, dst: Path, name: str, value: object) -> None:
    with tarfile.open(src) as old, tarfile.open(dst, "w:gz") as new:
        for member in old:
            data = old.extractfile(member).read()
            if member.name.endswith(name):
                data = value if isinstance(value, bytes) else pickle.dumps(value, protocol=2)
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_bad_cifar_tarballs_name_the_file_and_member(tmp_path: Path, capsys) -> None:
    good = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tarball(good)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    bad_shape = tmp_path / "shape.tar.gz"
    _rewrite_member(good, bad_shape, "data_batch_2", {b"data": np.zeros((4, 100), np.uint8),
                                                      b"labels": [0] * 4})  # fmt: skip
    evil = tmp_path / "evil.tar.gz"
    payload = b"cos\nsystem\n(S'echo hacked'\ntR."  # a pickle that would run a command
    _rewrite_member(good, evil, "test_batch", payload)
    no_test = tmp_path / "no_test.tar.gz"
    with tarfile.open(good) as old, tarfile.open(no_test, "w:gz") as new:
        for member in old:
            if not member.name.endswith("test_batch"):
                new.addfile(member, old.extractfile(member))
    cases = [
        (truncated, "truncated.tar.gz: cannot read"),
        (bad_shape, "data_batch_2: b'data' rows hold 100 values"),
        (evil, "cannot read cifar-10-batches-py/test_batch (UnpicklingError: refusing"),
        (no_test, "lacks ['cifar-10-batches-py/test_batch']"),
        (tmp_path / "missing.tar.gz", "does not exist"),
    ]
    for src, message in cases:
        assert main(["shards", "cifar", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def test_val_size_must_fit(tmp_path: Path, capsys) -> None:
    src = tmp_path / "c.tar.gz"
    write_cifar_tarball(src)
    assert main(["shards", "cifar", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "--val-size 5000 must be between 1 and 19" in capsys.readouterr().err


def test_svhn_mat_as_unlabelled_ood_and_labelled_split(tmp_path: Path) -> None:
    src = tmp_path / "test_32x32.mat"
    images, labels = write_svhn_mat(src, count=11)
    out = tmp_path / "svhn"
    assert main(["shards", "svhn", "--src", str(src), "--out", str(out)]) == 0
    ood = read_manifest(out, "ood")
    assert not ood.labeled and ood.classes == () and ood.num_samples == 11
    stored, stored_labels = split_pixels(out, "ood")
    assert np.array_equal(stored, images.transpose(3, 0, 1, 2)) and stored_labels == []
    assert main(["shards", "svhn", "--src", str(src), "--out", str(out), "--split", "test"]) == 0
    _, digits = split_pixels(out, "test")
    assert digits == [label % 10 for label in labels.ravel().tolist()]  # 10 is the digit 0
    assert 0 in digits


def test_bad_svhn_files_name_the_file(tmp_path: Path, capsys) -> None:
    from scipy.io import savemat

    good = tmp_path / "good.mat"
    write_svhn_mat(good)
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[:2000])
    no_x = tmp_path / "no_x.mat"
    savemat(str(no_x), {"y": np.ones((3, 1))})
    floats = tmp_path / "floats.mat"
    savemat(str(floats), {"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1))})
    cases = [
        (truncated, "truncated.mat: cannot read it as a .mat file"),
        (no_x, "no_x.mat: expected 'X' of shape H x W x 3 x N"),
        (floats, "floats.mat: 'X' must be uint8"),
    ]
    for src, message in cases:
        assert main(["shards", "svhn", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
