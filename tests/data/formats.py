"""Tiny files in the published formats of the paper's datasets, written from scratch.

* ``write_cifar_tarball``: cifar-10-python.tar.gz / cifar-100-python.tar.gz with the real
  member names and pickled dict layout (b"data" uint8 N x 3072, b"labels" or
  b"fine_labels", class names in batches.meta / meta);
* ``write_svhn_mat``: an SVHN .mat (X 32x32x3xN uint8, y Nx1 with 10 = digit 0);
* ``write_cifar_c``: CIFAR-10-C style ``<corruption>.npy`` (5 severities x n stacked,
  N x 32 x 32 x 3 uint8) plus ``labels.npy``;
* ``write_imagenet_c``: ``<corruption>/<severity>/<wnid>/*.JPEG``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]


def cifar_pixels(count: int, seed: int) -> np.ndarray:
    """uint8 [count, 3072] rows in CIFAR's layout (1024 R, 1024 G, 1024 B)."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3072), dtype=np.uint8)


def _add_pickle(tar: tarfile.TarFile, name: str, value: object) -> None:
    data = pickle.dumps(value, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_tarball(
    path: Path, kind: str = "cifar10", per_batch: int = 4, num_test: int = 6
) -> dict[str, np.ndarray]:
    """Write the tarball; returns the train and test rows and labels in published order."""
    names = [name.encode() for name in CIFAR10_NAMES]
    rng = np.random.default_rng(1)
    out: dict[str, np.ndarray] = {}
    with tarfile.open(path, "w:gz") as tar:
        if kind == "cifar10":
            folder, label_key = "cifar-10-batches-py", b"labels"
            batches = [f"data_batch_{i}" for i in range(1, 6)]
            _add_pickle(tar, f"{folder}/batches.meta", {b"label_names": names, b"num_vis": 3072})
        else:
            folder, label_key = "cifar-100-python", b"fine_labels"
            batches = ["train"]
            per_batch *= 5
            meta = {b"fine_label_names": names, b"coarse_label_names": [b"all"]}
            _add_pickle(tar, f"{folder}/meta", meta)
        rows, labels = [], []
        for index, batch in enumerate([*batches, "test_batch" if kind == "cifar10" else "test"]):
            count = num_test if index == len(batches) else per_batch
            data = cifar_pixels(count, seed=index)
            targets = rng.integers(0, len(names), size=count).tolist()
            content = {b"data": data, label_key: targets, b"batch_label": batch.encode()}
            if kind == "cifar100":
                content[b"coarse_labels"] = [0] * count
            _add_pickle(tar, f"{folder}/{batch}", content)
            rows.append(data)
            labels.append(np.array(targets))
    out["train_rows"] = np.concatenate(rows[:-1])
    out["train_labels"] = np.concatenate(labels[:-1])
    out["test_rows"], out["test_labels"] = rows[-1], labels[-1]
    return out


def write_svhn_mat(path: Path, count: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Write an SVHN-layout .mat; returns (X [32, 32, 3, N] uint8, y [N, 1] with 1..10)."""
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
    labels = (np.arange(count) % 10 + 1).reshape(-1, 1).astype(np.uint8)
    savemat(str(path), {"X": images, "y": labels})
    return images, labels


def write_cifar_c(
    root: Path, names: tuple[str, ...] = ("fog", "snow"), per_severity: int = 4, classes: int = 5
) -> np.ndarray:
    """``<name>.npy`` of shape [5 * n, 32, 32, 3] uint8 and ``labels.npy``; returns labels.

    Severity s holds rows (s-1)*n .. s*n-1; its images get brighter with s so tests can
    tell the severities apart.
    """
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(per_severity) % classes, 5).astype(np.int64)
    np.save(root / "labels.npy", labels)
    for offset, name in enumerate(names):
        images = np.concatenate(
            [
                np.full((per_severity, 32, 32, 3), 40 * severity + offset, dtype=np.uint8)
                for severity in range(1, 6)
            ]
        )
        np.save(root / f"{name}.npy", images)
    return labels


def write_imagenet_c(
    root: Path,
    wnids: list[str],
    names: tuple[str, ...] = ("fog",),
    per_class: int = 2,
    size: int = 40,
) -> None:
    """``<name>/<severity>/<wnid>/<k>.JPEG`` for severities 1..5."""
    for name in names:
        for severity in range(1, 6):
            for index, wnid in enumerate(wnids):
                folder = root / name / str(severity) / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(per_class):
                    value = (30 * severity + 7 * index + k) % 256
                    pixels = np.full((size, size, 3), value, dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", format="JPEG")


def write_digit_tree(root: Path, per_class: int | None = None) -> int:
    """The bundled MNIST digits as ``root/<digit>/<k>.png`` (28x28 L PNGs), a user's own
    class-per-folder tree of small grayscale images; ``per_class`` caps each class.
    Returns the number of images written."""
    from ft_dist.data.bundled import load_mnist_5k

    images, labels = load_mnist_5k()
    written = 0
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            Image.fromarray(images[index], mode="L").save(folder / f"{k:04d}.png")
            written += 1
    return written
