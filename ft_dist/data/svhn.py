"""SVHN from its official .mat files (``test_32x32.mat``, ...), written as one split.

The files hold ``X``: uint8 32 x 32 x 3 x N (image index last) and ``y``: N x 1 with
labels 1..10, where 10 means the digit 0. FreeTickets uses SVHN's test set as the
out-of-distribution set of CIFAR runs: written as split ``ood`` it carries no labels (an
OoD set is scored without them, and its digit classes are not the run's classes); any
other split name keeps the digit labels 0..9.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ft_dist.data.arrays import check_labels, encode_arrays
from ft_dist.data.shards import prepare_split_dir, write_split

SVHN_CLASSES = [str(digit) for digit in range(10)]


def read_mat(src: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 3], digit labels 0..9 [N]) from an SVHN .mat file."""
    if not src.is_file():
        raise FileNotFoundError(f"--src {src} does not exist")
    from scipy.io import loadmat

    try:
        content = loadmat(str(src))
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{src}: {error}; SVHN's official files are MATLAB v5") from None
    except Exception as error:  # scipy raises ValueError, MatReadError, OSError, ...
        raise ValueError(
            f"{src}: cannot read it as a .mat file ({type(error).__name__}: {error}); it is "
            "truncated or not an SVHN .mat file -- download it again"
        ) from None
    return _images(content, src), _labels(content, src)


def _images(content: dict[str, Any], src: Path) -> np.ndarray:
    images = content.get("X")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[2] != 3:
        shape = getattr(images, "shape", None)
        raise ValueError(f"{src}: expected 'X' of shape H x W x 3 x N, got {shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{src}: 'X' must be uint8, got {images.dtype}")
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2))


def _labels(content: dict[str, Any], src: Path) -> np.ndarray:
    labels = content.get("y")
    if not isinstance(labels, np.ndarray) or labels.size != content["X"].shape[3]:
        shape = getattr(labels, "shape", None)
        raise ValueError(f"{src}: expected 'y' of shape N x 1 for N images, got {shape}")
    digits = check_labels(labels.reshape(-1).astype(np.int64), 11, f"{src} 'y'")
    return digits % 10  # SVHN writes the digit 0 as label 10


def write_svhn(
    src: Path, out: Path, *, split: str = "ood", shard_size: int = 1000, overwrite: bool = False
) -> dict[str, Any]:
    """Write one split of an SVHN .mat file; split ``ood`` is written without labels."""
    images, labels = read_mat(src)
    labeled = split != "ood"
    return write_split(
        prepare_split_dir(out, split, overwrite),
        encode_arrays(images, labels if labeled else None),
        classes=SVHN_CLASSES if labeled else [],
        labeled=labeled,
        shard_size=shard_size,
        info={"source": str(src), "recipe": None},
    )
