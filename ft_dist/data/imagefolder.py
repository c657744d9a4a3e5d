"""Turn an image-folder dataset (the ImageNet layout) into shards.

Two source layouts:

* class-per-subfolder (``SRC/<class>/<image>``): ImageNet train, or a val set arranged
  the same way; classes are the sorted subfolder names;
* flat (``SRC/<image>``, ImageNet's original val layout) with a label file: the Kaggle
  ``LOC_val_solution.csv`` (``ImageId,PredictionString`` -- first token is the synset)
  or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line,
  mapped to synsets through the devkit's ``meta.mat``).

Class indices of a split written next to an existing ``train`` split (or with
``classes_from``) follow that split's class list, so val labels match the training shards.
Every image is fully decoded once while writing, so a corrupt file is caught here and not
in the middle of a training run; the original bytes are stored as they are.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_dist.data.manifest import MANIFEST_NAME, read_manifest
from ft_dist.data.pixelstats import PixelMoments
from ft_dist.data.shards import (
    FORMAT_EXTENSIONS,
    EncodedImage,
    SplitStats,
    prepare_split_dir,
    write_split,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm"}
# Larger images are refused before decoding (--max-pixels raises it): a 144-megapixel PNG
# takes ~2 GB to decode, and no recipe trains on more than a few megapixels.
MAX_PIXELS = 50_000_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFolderJob:
    """Arguments of ``ft-dist shards imagefolder``."""

    src: Path
    out: Path
    split: str = "train"
    shard_size: int = 1000
    seed: int = 0
    skip_corrupt: bool = False
    labels: Path | None = None
    devkit_meta: Path | None = None
    classes_from: Path | None = None
    recipe: str | None = None
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    max_pixels: int = MAX_PIXELS


def write_imagefolder(job: ImageFolderJob) -> dict[str, Any]:
    """Scan, shuffle, check and pack one split. Returns the manifest content."""
    if not job.src.is_dir():
        raise FileNotFoundError(f"--src {job.src} is not a directory")
    known = _known_classes(job)
    if job.labels is not None:
        classes, items, others = _scan_flat(job, job.labels, known)
    else:
        classes, items, others = _scan_tree(job.src, known)
    _report_non_images(job.src, others)
    random.Random(job.seed).shuffle(items)  # so that no shard holds a single class
    split_dir = prepare_split_dir(job.out, job.split, job.overwrite)
    stats = SplitStats()
    encoded = _checked_images(items, job, stats)
    info = {
        "source": str(job.src),
        "seed": job.seed,
        "recipe": job.recipe,
        "skipped_non_images": len(others),
        "non_image_files": [str(path) for path in others[:100]],
    }
    content = write_split(
        split_dir,
        encoded,
        classes=classes,
        labeled=True,
        shard_size=job.shard_size,
        info=info,
        stats=stats,
    )
    return content


def _known_classes(job: ImageFolderJob) -> list[str] | None:
    """The class list to index into: --classes-from, else an existing train split."""
    if job.classes_from is not None:
        source = job.classes_from
        if source.name == MANIFEST_NAME:
            return list(read_manifest(source.parent.parent, source.parent.name).classes)
        return list(read_manifest(source.parent, source.name).classes)
    train_manifest = job.out / "train" / MANIFEST_NAME
    if job.split != "train" and train_manifest.is_file():
        return list(read_manifest(job.out, "train").classes)
    return None


def _report_non_images(src: Path, others: list[Path]) -> None:
    """Files skipped for their suffix are counted (manifest: skipped_non_images) and named."""
    if others:
        names = ", ".join(str(path.relative_to(src)) for path in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        log.warning(
            "skipped %d file(s) under %s that are not images (%s): %s%s",
            len(others),
            src,
            " ".join(sorted(IMAGE_SUFFIXES)),
            names,
            more,
        )


def _scan_tree(
    src: Path, known: list[str] | None
) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(
            f"--src {src} has no class subfolders; for a flat folder of images pass its "
            "label file with --labels"
        )
    classes = known if known is not None else folders
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise ValueError(
            f"--src {src} has class folders {unknown[:5]} that are not in the training "
            "class list; write this split with the same classes as train (or --classes-from)"
        )
    files = [
        (path, index[folder])
        for folder in folders
        for path in sorted((src / folder).rglob("*"))
        if path.is_file()
    ]
    items = [(path, label) for path, label in files if path.suffix.lower() in IMAGE_SUFFIXES]
    others = [path for path, _ in files if path.suffix.lower() not in IMAGE_SUFFIXES]
    if not items:
        raise ValueError(f"--src {src} holds no images ({sorted(IMAGE_SUFFIXES)})")
    _report_empty_classes(src, folders, {label for _, label in items}, index)
    return classes, items, others


def _report_empty_classes(
    src: Path, folders: list[str], labels: set[int], index: dict[str, int]
) -> None:
    """A class folder without images becomes a class no sample has: say so."""
    empty = [name for name in folders if index[name] not in labels]
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        log.warning(
            "class folder(s) %s under %s hold no images: they stay in the class list (so "
            "label numbers match the folders) but no sample has them; add their images, or "
            "remove the folders to drop the classes",
            ", ".join(empty[:5]) + more,
            src,
        )


def _scan_flat(
    job: ImageFolderJob, labels: Path, known: list[str] | None
) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    if known is None:
        raise ValueError(
            "a flat val folder needs the training class list: write the train split into "
            f"{job.out} first, or pass --classes-from TRAIN_SPLIT_DIR"
        )
    synsets = read_label_file(labels, job.devkit_meta)
    index = {name: i for i, name in enumerate(known)}
    items, others = [], []
    for path in sorted(job.src.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.is_file():
                others.append(path)
            continue
        synset = synsets.get(path.stem)
        if synset is None:
            raise ValueError(f"{path.name} has no entry in the label file {labels}")
        if synset not in index:
            raise ValueError(
                f"{path.name} is labelled {synset!r} in {labels}, which is not one of "
                "the training classes; check that the label file matches the dataset"
            )
        items.append((path, index[synset]))
    if not items:
        raise ValueError(f"--src {job.src} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return known, items, others


def read_label_file(labels: Path, devkit_meta: Path | None) -> dict[str, str]:
    """Map image stem -> synset from either ImageNet val label format."""
    if not labels.is_file():
        raise FileNotFoundError(f"--labels {labels} does not exist")
    if labels.suffix.lower() == ".csv":
        return _read_loc_csv(labels)
    return _read_devkit_truth(labels, devkit_meta)


def _read_loc_csv(labels: Path) -> dict[str, str]:
    with open(labels, newline="") as stream:
        reader = csv.DictReader(stream)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValueError(
                f"{labels} must have the columns ImageId,PredictionString "
                "(the LOC_val_solution.csv form)"
            )
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader}


def _read_devkit_truth(labels: Path, devkit_meta: Path | None) -> dict[str, str]:
    lines = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
    if not all(line.isdigit() for line in lines):
        raise ValueError(
            f"{labels}: expected the devkit form (one ILSVRC2012_ID per line) or a .csv "
            "with ImageId,PredictionString"
        )
    if devkit_meta is None:
        raise ValueError(
            f"{labels} holds devkit ILSVRC2012_IDs; pass --devkit-meta with the devkit's "
            "data/meta.mat to map them to synsets"
        )
    id_to_synset = read_devkit_meta(devkit_meta)
    mapping = {}
    for number, line in enumerate(lines, start=1):
        if int(line) not in id_to_synset:
            raise ValueError(f"{labels} line {number}: ILSVRC2012_ID {line} not in {devkit_meta}")
        mapping[f"ILSVRC2012_val_{number:08d}"] = id_to_synset[int(line)]
    return mapping


def read_devkit_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID for the leaf synsets (the 1000 classes) of the devkit."""
    if not path.is_file():
        raise FileNotFoundError(f"--devkit-meta {path} does not exist")
    from scipy.io import loadmat

    synsets = loadmat(str(path), squeeze_me=True)["synsets"]
    return {
        int(row["ILSVRC2012_ID"]): str(row["WNID"])
        for row in synsets
        if int(row["num_children"]) == 0
    }


def _checked_images(items: list, job: ImageFolderJob, stats: SplitStats) -> Iterator[EncodedImage]:
    """Read and fully decode every image (in a process pool when workers > 1)."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=f"shards {job.split}", unit="img", disable=not job.progress)
    if job.workers > 1:
        import multiprocessing

        # fork: children need only PIL; spawn would re-import the CLI (and torch) in each.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        load = functools.partial(load_image, max_pixels=job.max_pixels)
        with context.Pool(job.workers) as pool:
            yield from _collect(pool.imap(load, items, chunksize=32), job, stats, bar)
    else:
        load = functools.partial(load_image, max_pixels=job.max_pixels)
        yield from _collect(map(load, items), job, stats, bar)
    bar.close()


def _collect(results, job: ImageFolderJob, stats: SplitStats, bar) -> Iterator[EncodedImage]:
    for result in results:
        bar.update(1)
        if isinstance(result, TooLarge):  # not corrupt: --skip-corrupt does not hide it
            raise ValueError(result)
        if isinstance(result, str):
            if not job.skip_corrupt:
                raise ValueError(
                    f"corrupt image {result}; fix or remove it, or pass --skip-corrupt"
                )
            stats.skipped.append(result)
            continue
        yield result


class TooLarge(str):
    """load_image's answer for an image above the pixel limit (a one-line message)."""


def load_image(item: tuple[Path, int], max_pixels: int = MAX_PIXELS) -> EncodedImage | str:
    """Read one file and decode it fully; a string names the file and the problem.

    Images above ``max_pixels`` are refused from their header, before decoding (PIL's own
    decompression-bomb limit is replaced by this one, whose message names the flag).
    """
    from PIL import Image

    path, label = item
    data = path.read_bytes()
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                return TooLarge(
                    f"{path} is {image.width}x{image.height} = {pixels / 1e6:.0f} megapixels, "
                    f"above --max-pixels {max_pixels} (decoding it takes ~"
                    f"{pixels * len(image.getbands()) * 4 / 1e9:.1f} GB); downscale it, or "
                    "raise --max-pixels to accept it"
                )
            image.load()
            ext = FORMAT_EXTENSIONS.get(image.format or "")
            if ext is None:
                return f"{path} (unsupported format {image.format})"
            # The split's mean/std are measured here, on pixels decoded anyway.
            moments = PixelMoments.of_image(image)
            return EncodedImage(ext, data, label, image.width, image.height, image.mode, moments)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
        return f"{path} ({type(error).__name__}: {error})"
    finally:
        Image.MAX_IMAGE_PIXELS = previous
