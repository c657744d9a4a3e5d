"""CIFAR-10 / CIFAR-100 from the official python tarballs, written as train/val/test shards.

The tarballs (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) hold pickles of
dicts with ``b"data"`` (uint8 N x 3072: the 1024 red, then green, then blue pixels of a
32x32 image, row-major) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100);
class names are in ``batches.meta`` / ``meta``. They are read straight from the tar,
without extracting, through an unpickler that only builds numpy arrays (a pickle can
otherwise run arbitrary code).

Splits follow the official FreeTickets code: train = the first 45,000 training images,
val = the last 5,000 (model selection), test = the test set, each in the published order.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ft_dist.data.arrays import check_labels, encode_arrays
from ft_dist.data.shards import prepare_split_dir, write_split
from ft_dist.private_api import NUMPY_PICKLE_MODULES

VAL_SIZE = 5000  # the last 5,000 training images, as in FreeTickets' datasets.py


@dataclass(frozen=True)
class CifarLayout:
    """Member names and keys of one official tarball."""

    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    recipe: str  # transforms.RECIPES key: CIFAR-10 or CIFAR-100 statistics

    def members(self) -> list[str]:
        return [f"{self.folder}/{name}" for name in (*self.train, self.test, self.meta)]


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", b"labels", b"label_names", "cifar",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names",
        "cifar100",
    ),
}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, lists, dicts and bytes only: refuses any other global."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        *((module, name) for module in NUMPY_PICKLE_MODULES for name in ("_reconstruct", "scalar")),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_tarball(src: Path) -> tuple[CifarLayout, dict[str, Any]]:
    """The layout and the unpickled members of an official CIFAR python tarball."""
    if not src.is_file():
        raise FileNotFoundError(f"--src {src} does not exist")
    wanted = {name for layout in LAYOUTS.values() for name in layout.members()}
    loaded: dict[str, Any] = {}
    current = "its header"
    try:
        with tarfile.open(src, "r:*") as tar:
            for member in tar:  # one pass in stream order: no seeking in the gzip stream
                current = member.name.removeprefix("./")
                if current in wanted and member.isfile():
                    loaded[current] = _unpickle(tar.extractfile(member))
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{src}: cannot read {current} ({type(error).__name__}: {error}); the file is "
            "truncated or not an official CIFAR python tarball -- download it again"
        ) from None
    for layout in LAYOUTS.values():
        if all(name in loaded for name in layout.members()):
            return layout, loaded
    raise ValueError(_missing_message(src, loaded))


def _unpickle(stream: IO[bytes] | None) -> Any:
    if stream is None:
        raise tarfile.ReadError("not a regular file")
    return _ArrayUnpickler(stream, encoding="bytes").load()


def _missing_message(src: Path, loaded: dict[str, Any]) -> str:
    layout = max(LAYOUTS.values(), key=lambda lay: sum(n in loaded for n in lay.members()))
    missing = [name for name in layout.members() if name not in loaded]
    return (
        f"{src} is not an official CIFAR python tarball: it lacks {missing}; expected "
        "cifar-10-python.tar.gz (cifar-10-batches-py/data_batch_1..5, test_batch, "
        "batches.meta) or cifar-100-python.tar.gz (cifar-100-python/train, test, meta)"
    )


def batch_arrays(batch: Any, layout: CifarLayout, num_classes: int, where: str):
    """(uint8 images [N, 32, 32, 3], int64 labels [N]) of one unpickled batch."""
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{where}: expected a dict with b'data' and {layout.label_key!r}, got {keys}"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{where}: b'data' must be a uint8 N x 3072 array")
    if data.shape[1] != 3072:
        raise ValueError(f"{where}: b'data' rows hold {data.shape[1]} values, not 3072 (32x32x3)")
    labels = check_labels(np.asarray(batch[layout.label_key]), num_classes, where)
    if len(labels) != len(data):
        raise ValueError(f"{where}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def class_names(meta: Any, layout: CifarLayout, where: str) -> list[str]:
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise ValueError(
            f"{where}: expected a dict with the class names under {layout.names_key!r}"
        )
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def write_cifar(
    src: Path,
    out: Path,
    *,
    val_size: int = VAL_SIZE,
    shard_size: int = 1000,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write train / val / test shards of an official CIFAR-10 or CIFAR-100 tarball."""
    layout, loaded = read_tarball(src)
    path = lambda name: f"{src.name}:{layout.folder}/{name}"  # noqa: E731 - error locations
    classes = class_names(loaded[f"{layout.folder}/{layout.meta}"], layout, path(layout.meta))
    parts = [
        batch_arrays(loaded[f"{layout.folder}/{name}"], layout, len(classes), path(name))
        for name in layout.train
    ]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    if not 0 < val_size < len(train_images):
        raise ValueError(
            f"--val-size {val_size} must be between 1 and {len(train_images) - 1} "
            f"(the training set of {src} has {len(train_images)} images)"
        )
    test = batch_arrays(
        loaded[f"{layout.folder}/{layout.test}"], layout, len(classes), path(layout.test)
    )
    cut = len(train_images) - val_size
    splits = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": test,
    }
    info = {"source": str(src), "recipe": layout.recipe}
    order = f"train = first {cut} training images, val = last {val_size}, test = test set"
    written = {}
    for split, (images, labels) in splits.items():
        written[split] = write_split(
            prepare_split_dir(out, split, overwrite),
            encode_arrays(images, labels),
            classes=classes,
            labeled=True,
            shard_size=shard_size,
            info={**info, "order": order},
        )
    return written
