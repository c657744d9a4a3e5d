"""Published corruption benchmarks read from disk, through the run's evaluation geometry.

Two layouts (Hendrycks & Dietterich, 2019), detected from the directory:

* CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy``, uint8 [5n, 32, 32, 3] -- severities
  1..5 stacked, n = 10,000 each -- and ``labels.npy`` [5n] (the CIFAR class indices).
  Arrays are memory-mapped (``np.load(mmap_mode="r")``) and read per sample, so 50,000
  images never sit in memory as floats.
* ImageNet-C: ``<corruption>/<severity>/<wnid>/*.JPEG``; the wnid folders are matched
  to the run's class list (others are skipped and counted).

Every cell (corruption, severity) is a map-style dataset of raw [0, 1] tensors shaped
like the run's inputs (mode, side) and labels in the run's class indices; normalisation
comes afterwards, as for every evaluation input. ``limit`` keeps N evenly spaced samples
per cell (every class represented) for quick runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ft_dist.data.imagefolder import IMAGE_SUFFIXES
from ft_dist.data.reader import DataError
from ft_dist.data.transforms import Recipe, recipe_transform

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionSet:
    """The cells of one benchmark directory, in (corruption, severity) order."""

    kind: str  # "cifar-c" or "imagenet-c"
    root: Path
    cells: tuple[tuple[str, int, Dataset], ...]
    notes: dict[str, Any] = field(default_factory=dict)


def open_corruptions(
    root: Path,
    recipe: Recipe,
    classes: Sequence[str],
    *,
    names: Sequence[str] = (),
    severities: Sequence[int] = SEVERITIES,
    limit: int | None = None,
) -> CorruptionSet:
    """Check ``root`` and index its cells; ``names`` () = every corruption found."""
    if not root.is_dir():
        raise FileNotFoundError(f"--corruptions-from {root} is not a directory")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ValueError(f"--severities {list(severities)}: choose from {list(SEVERITIES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--corruption-limit must be >= 1, got {limit}")
    # Corrupted images are already at their final size (ImageNet-C: 224 px): resize only
    # where the side differs, never ImageNet's resize-256-then-crop.
    raw = replace(recipe, eval_crop="fit", resize_first=True)
    transform = recipe_transform(raw, train=False, normalize=False)
    if (root / "labels.npy").is_file():
        return _cifar_c(root, recipe.mode, transform, len(classes), names, severities, limit)
    return _imagenet_c(root, recipe.mode, transform, classes, names, severities, limit)


def cell_batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """(images, labels) batches of one cell, in order."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)


def spaced(count: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` evenly spaced samples of ``count`` (all when no limit)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _select(names: Sequence[str], found: list[str], root: Path) -> list[str]:
    if not found:
        raise ValueError(
            f"--corruptions-from {root}: no corruption found; expected CIFAR-10-C "
            "(<corruption>.npy + labels.npy) or ImageNet-C (<corruption>/<severity>/<class>/"
            "*.JPEG)"
        )
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ValueError(f"--corruptions {unknown} are not in {root}; it holds {found}")
    return list(names) or found


# --------------------------------------------------------------------------- CIFAR-C
class _NpyCell(Dataset):
    """Rows of one memory-mapped ``<corruption>.npy``; the map is opened per process."""

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, mode: str, transform):
        self.path, self.rows, self.labels = path, rows, labels
        self.mode, self.transform = mode, transform
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        row = int(self.rows[index])
        image = Image.fromarray(np.asarray(self._array[row]), mode="RGB")
        return self.transform(image.convert(self.mode)), int(self.labels[row])

    def __getstate__(self) -> dict[str, Any]:  # spawned workers re-open the map
        return {**self.__dict__, "_array": None}


def _cifar_c(root, mode, transform, num_classes, names, severities, limit) -> CorruptionSet:
    labels = _labels(root / "labels.npy", num_classes)
    per_severity = len(labels) // 5
    found = sorted(p.stem for p in root.glob("*.npy") if p.name != "labels.npy")
    cells = []
    for name in _select(names, found, root):
        path = root / f"{name}.npy"
        _check_images(path, len(labels))
        for severity in severities:
            rows = (severity - 1) * per_severity + spaced(per_severity, limit)
            cells.append((name, severity, _NpyCell(path, rows, labels, mode, transform)))
    return CorruptionSet("cifar-c", root, tuple(cells), {"per_cell": len(cells[0][2])})


def _labels(path: Path, num_classes: int) -> np.ndarray:
    try:
        labels = np.load(path)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read it as .npy ({error}); download it again") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: expected a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) == 0 or len(labels) % 5:
        raise ValueError(f"{path}: {len(labels)} labels is not 5 severities x n images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{path}: labels {labels.min()}..{labels.max()} are outside the run's "
            f"{num_classes} classes (a CIFAR-100-C set for a CIFAR-10 run?)"
        )
    return labels.astype(np.int64)


def _check_images(path: Path, count: int) -> None:
    try:
        images = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{path}: cannot read it as .npy ({error}); truncated? download it again"
        ) from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) != count:
        raise ValueError(f"{path}: {len(images)} images but labels.npy has {count} labels")


# --------------------------------------------------------------------------- ImageNet-C
class _FileCell(Dataset):
    """Image files of one ImageNet-C cell with their class indices."""

    def __init__(self, files: list[tuple[Path, int]], mode: str, transform) -> None:
        self.files, self.mode, self.transform = files, mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[index]
        try:
            with Image.open(path) as image:
                image.load()
                converted = image.convert(self.mode)
        except Exception as error:  # PIL: OSError, SyntaxError, ValueError, ...
            raise DataError(f"{path}: cannot decode ({type(error).__name__}: {error})") from None
        return self.transform(converted), label


def _imagenet_c(root, mode, transform, classes, names, severities, limit) -> CorruptionSet:
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and _severity_dirs(p))
    index = {name: i for i, name in enumerate(classes)}
    cells, skipped = [], set()
    for name in _select(names, found, root):
        for severity in severities:
            folder = root / name / str(severity)
            if not folder.is_dir():
                raise ValueError(f"{folder} is missing (severity {severity} of {name})")
            files, unknown = _cell_files(folder, index)
            skipped |= unknown
            if not files:
                raise ValueError(
                    f"{folder}: no images in class folders that match the run's classes "
                    f"(e.g. {sorted(unknown)[:3]} vs {list(classes)[:3]}); the run must be "
                    "trained on ImageNet wnid class folders"
                )
            chosen = [files[i] for i in spaced(len(files), limit)]
            cells.append((name, severity, _FileCell(chosen, mode, transform)))
    notes = {"skipped_class_folders": len(skipped), "per_cell_max": max(len(c[2]) for c in cells)}
    return CorruptionSet("imagenet-c", root, tuple(cells), notes)


def _severity_dirs(path: Path) -> bool:
    return any((path / str(severity)).is_dir() for severity in SEVERITIES)


def _cell_files(folder: Path, index: dict[str, int]) -> tuple[list[tuple[Path, int]], set[str]]:
    files, unknown = [], set()
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if class_dir.name not in index:
            unknown.add(class_dir.name)
            continue
        label = index[class_dir.name]
        files += [
            (path, label)
            for path in sorted(class_dir.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
    return files, unknown
