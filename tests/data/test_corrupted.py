"""CIFAR-C and ImageNet-C read from files in their published layouts (tests/data/formats.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ft_dist.data.corrupted import cell_batches, open_corruptions, spaced
from ft_dist.data.reader import DataError
from ft_dist.data.transforms import preset_recipe
from tests.data.formats import write_cifar_c, write_imagenet_c

CIFAR = preset_recipe("cifar", 32, 32)
CLASSES = tuple(f"c{i}" for i in range(5))


def all_batches(dataset, batch_size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*cell_batches(dataset, batch_size), strict=True)
    return torch.cat(images), torch.cat(labels)


def test_cifar_c_cells_are_the_stacked_severities(tmp_path: Path) -> None:
    labels = write_cifar_c(tmp_path, ("fog", "snow"), per_severity=4)
    found = open_corruptions(tmp_path, CIFAR, CLASSES)
    assert found.kind == "cifar-c"
    assert [(name, sev) for name, sev, _ in found.cells] == [
        (name, sev) for name in ("fog", "snow") for sev in range(1, 6)
    ]
    for name, severity, dataset in found.cells:
        images, targets = all_batches(dataset)
        assert images.shape == (4, 3, 32, 32)  # raw [0, 1], not normalised
        offset = 1 if name == "snow" else 0
        assert torch.allclose(images, torch.full_like(images, (40 * severity + offset) / 255))
        assert targets.tolist() == labels[(severity - 1) * 4 : severity * 4].tolist()


def test_cifar_c_through_another_runs_geometry_and_a_limit(tmp_path: Path) -> None:
    write_cifar_c(tmp_path, ("fog", "snow"), per_severity=10)
    mnist = preset_recipe("mnist", 28, 28)
    found = open_corruptions(
        tmp_path, mnist, tuple(str(d) for d in range(10)), names=["snow"], severities=[2], limit=3
    )
    (name, severity, dataset), = found.cells  # fmt: skip
    images, _ = all_batches(dataset)
    assert (name, severity, images.shape) == ("snow", 2, (3, 1, 28, 28))  # gray, resized
    assert spaced(10, 3).tolist() == [0, 4, 9] and spaced(3, 10).tolist() == [0, 1, 2]


def test_bad_cifar_c_files_name_the_file(tmp_path: Path) -> None:
    write_cifar_c(tmp_path, ("fog", "snow"), per_severity=4)
    fog = tmp_path / "fog.npy"
    fog.write_bytes(fog.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"fog.npy: cannot read it as .npy .*truncated"):
        open_corruptions(tmp_path, CIFAR, CLASSES)
    found = open_corruptions(tmp_path, CIFAR, CLASSES, names=["snow"])  # others still usable
    assert len(found.cells) == 5
    with pytest.raises(ValueError, match=r"\['rain'\] are not in .*\['fog', 'snow'\]"):
        open_corruptions(tmp_path, CIFAR, CLASSES, names=["rain"])
    with pytest.raises(ValueError, match="labels.npy: labels 0..3 are outside the run's 2"):
        open_corruptions(tmp_path, CIFAR, ("a", "b"))
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(ValueError, match="labels.npy: 7 labels is not 5 severities x n"):
        open_corruptions(tmp_path, CIFAR, CLASSES)
    np.save(tmp_path / "labels.npy", np.zeros(25, np.int64))
    with pytest.raises(ValueError, match="snow.npy: 20 images but labels.npy has 25"):
        open_corruptions(tmp_path, CIFAR, CLASSES, names=["snow"])
    np.save(tmp_path / "snow.npy", np.zeros((25, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="snow.npy: expected uint8"):
        open_corruptions(tmp_path, CIFAR, CLASSES, names=["snow"])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        open_corruptions(tmp_path / "none", CIFAR, CLASSES)


def test_imagenet_c_tree_matches_wnids_and_skips_others(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537", "n09999999"]
    write_imagenet_c(tmp_path, wnids, ("fog", "contrast"), per_class=2, size=40)
    run_classes = ("n01440764", "n01443537", "n02000000")
    imagenet = preset_recipe("imagenet", 32, 64)
    found = open_corruptions(tmp_path, imagenet, run_classes, severities=[1, 5])
    assert found.kind == "imagenet-c" and found.notes["skipped_class_folders"] == 1
    assert [(n, s) for n, s, _ in found.cells] == [
        ("contrast", 1), ("contrast", 5), ("fog", 1), ("fog", 5)
    ]  # fmt: skip
    images, labels = all_batches(found.cells[0][2])
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1]
    limited = open_corruptions(tmp_path, imagenet, run_classes, names=["fog"], limit=2)
    assert {int(label) for label in all_batches(limited.cells[0][2])[1]} == {0, 1}


def test_bad_imagenet_c_trees_fail_clearly(tmp_path: Path) -> None:
    write_imagenet_c(tmp_path, ["n01440764"], ("fog",), per_class=1)
    with pytest.raises(ValueError, match=r"no images in class folders that match"):
        open_corruptions(tmp_path, CIFAR, ("n00000001",))
    broken = next((tmp_path / "fog" / "3" / "n01440764").iterdir())
    broken.write_bytes(broken.read_bytes()[:50])
    found = open_corruptions(tmp_path, CIFAR, ("n01440764",), severities=[3])
    with pytest.raises(DataError, match=r"n01440764_0.JPEG: cannot decode"):
        all_batches(found.cells[0][2])
    (tmp_path / "fog" / "4").rename(tmp_path / "fog" / "x")
    with pytest.raises(ValueError, match=r"fog/4 is missing \(severity 4 of fog\)"):
        open_corruptions(tmp_path, CIFAR, ("n01440764",))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no corruption found"):
        open_corruptions(empty, CIFAR, CLASSES)
