"""`ft-dist bench data`: images/s of the shard training stream against two references.

* webdataset  -- ``TrainStream`` over tar shards: ready ``(images, labels)`` batches;
* memory      -- the same decode + augment over the same JPEG bytes held in memory, with
                 the same loader workers: the compute bound (goal: webdataset >= 0.9x);
* imagefolder -- torchvision ``ImageFolder`` + ``DataLoader`` over the same images as
                 files, same workers and transform (goal: webdataset >= 1.0x).

Without ``--shards`` it writes ImageNet-like JPEGs (400x350 crops of scikit-learn's
sample photographs) and their shards into a temp dir. Methods are timed in interleaved
rounds (median reported), each round a fresh loader per epoch, as training uses them;
images per CPU-second (main process + loader workers) is reported too, since it stays
comparable on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="shard stream images/s vs in-memory decode and torchvision ImageFolder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shards", type=Path, help="dataset dir (default: generate JPEGs)")
    parser.add_argument("--split", default="train", help="split of --shards to read")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (default: 2)")
    parser.add_argument(
        "--num-images", type=int, default=768, help="JPEGs to generate (default: 768)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--image-size", type=int, default=224, help="crop side (default: 224)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timed rounds, median kept (default: 5)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.num_images < 1 or args.batch_size < 1 or args.rounds < 1:
        raise ValueError("--workers must be >= 0; --num-images, --batch-size, --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="ft-dist-bench-data-") as tmp:
        root, folder, samples = _prepare(args, Path(tmp))
        result = measure(args, root, folder, samples)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


def _prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, list[tuple[bytes, int]]]:
    """(shard root, image-folder copy, in-memory samples) holding the same images."""
    if args.shards is None:
        from ft_dist.data.imagefolder import ImageFolderJob, write_imagefolder

        folder = tmp / "images"
        write_jpegs(folder, args.num_images)
        shard_size = max(1, args.num_images // (4 * max(1, args.workers)))
        job = ImageFolderJob(src=folder, out=tmp / "shards", shard_size=shard_size, progress=False)
        write_imagefolder(job)
        root = tmp / "shards"
    else:
        root, folder = args.shards, tmp / "images"
    samples = read_samples(root, args.split)
    if args.shards is not None:
        write_folder(folder, samples)
    return root, folder, samples


def write_jpegs(folder: Path, count: int, num_classes: int = 8) -> None:
    """ImageNet-like JPEGs: random 400x350 crops (flipped, quality 85-95) of real photos."""
    import numpy as np
    from PIL import Image, ImageOps

    from ft_dist.data.bundled import sklearn_photo_paths

    photos = [Image.open(path).convert("RGB") for path in sklearn_photo_paths()]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        left = int(rng.integers(0, photo.width - 400 + 1))
        top = int(rng.integers(0, photo.height - 350 + 1))
        crop = photo.crop((left, top, left + 400, top + 350))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        target = folder / f"class_{i % num_classes}"
        target.mkdir(parents=True, exist_ok=True)
        crop.save(target / f"img_{i:05d}.jpg", quality=int(rng.integers(85, 96)))


def read_samples(root: Path, split: str) -> list[tuple[bytes, int]]:
    """(image bytes, label) of every sample of a split, read from its shards."""
    from ft_dist.data.manifest import read_manifest
    from ft_dist.data.reader import IMAGE_EXTENSIONS, iter_shard

    manifest = read_manifest(root, split)
    samples = []
    for index, shard in enumerate(manifest.shards):
        for _, _, sample in iter_shard(manifest.shard_url(index), shard):
            data = next(sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample)
            samples.append((data, int(sample["cls"])))
    return samples


def write_folder(folder: Path, samples: list[tuple[bytes, int]]) -> None:
    """The samples as an ImageFolder tree (extension from the image's magic bytes)."""
    for i, (data, label) in enumerate(samples):
        ext = "png" if data.startswith(b"\x89PNG") else "jpg"
        (folder / f"class_{label:04d}").mkdir(parents=True, exist_ok=True)
        (folder / f"class_{label:04d}" / f"img_{i:07d}.{ext}").write_bytes(data)


def measure(
    args: argparse.Namespace, root: Path, folder: Path, samples: list[tuple[bytes, int]]
) -> dict[str, Any]:
    """Median images/s (wall and per CPU-second) of each method over interleaved rounds."""
    methods = _methods(args, root, folder, samples)
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, make_epoch in methods.items():
            wall_rate, cpu_rate = _throughput(make_epoch, args.epochs)
            wall[name].append(wall_rate)
            cpu[name].append(cpu_rate)
    median = {name: statistics.median(values) for name, values in wall.items()}
    per_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "images": len(samples),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "images_per_second": median,
        "images_per_cpu_second": per_cpu,
        "rounds": wall,
        "ratios": _ratios(median),
        "cpu_ratios": _ratios(per_cpu),
        "goals": {"vs_memory": 0.9, "vs_imagefolder": 1.0},
        "goals_met": _goals_met(_ratios(median)),
    }


def _ratios(rates: dict[str, float]) -> dict[str, float]:
    return {
        "vs_memory": rates["webdataset"] / rates["memory"],
        "vs_imagefolder": rates["webdataset"] / rates["imagefolder"],
    }


def _goals_met(ratios: dict[str, float]) -> bool:
    return ratios["vs_memory"] >= 0.9 and ratios["vs_imagefolder"] >= 1.0


def _methods(
    args: argparse.Namespace, root: Path, folder: Path, samples: list[tuple[bytes, int]]
) -> dict[str, Callable[[int], Iterable[Any]]]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from ft_dist.data import DataConfig
    from ft_dist.data.pipeline import TrainStream
    from ft_dist.data.transforms import build_transform

    cfg = DataConfig(
        root=str(root), train_split=args.split, val_split=None, test_split=None,
        recipe="imagenet", image_size=args.image_size, batch_size_per_worker=args.batch_size,
        loader_workers=args.workers, shuffle_buffer=min(1000, len(samples)),
    )  # fmt: skip
    stream = TrainStream(cfg, rank=0, world_size=1)
    transform = build_transform("imagenet", train=True, size=args.image_size, native_size=0)
    memory = _MemoryImages(samples, transform)
    files = ImageFolder(str(folder), transform=transform)

    def loader(dataset: Any) -> Callable[[int], Iterable[Any]]:
        def make(epoch: int) -> Iterable[Any]:
            return DataLoader(
                dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                num_workers=args.workers, generator=torch.Generator().manual_seed(epoch),
                multiprocessing_context="fork" if args.workers else None,
            )  # fmt: skip

        return make

    return {"webdataset": stream.epoch, "memory": loader(memory), "imagefolder": loader(files)}


class _MemoryImages:
    """Map-style dataset over in-memory JPEG bytes: the decode + augment compute bound."""

    def __init__(self, samples: list[tuple[bytes, int]], transform: Callable) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from ft_dist.data.reader import decode_image

        data, label = self.samples[index]
        return self.transform(decode_image({"jpg": data}, "RGB")), label


def _throughput(make_epoch: Callable[[int], Iterable[Any]], epochs: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process and its workers).

    CPU time counts loader workers through RUSAGE_CHILDREN: they exit (and are reaped) at
    the end of every epoch. It stays meaningful on a machine shared with other jobs, where
    wall-clock rates swing with the load.
    """
    count = 0
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for epoch in range(epochs):
        for images, _ in make_epoch(epoch):
            count += len(images)
    return count / (time.perf_counter() - wall), count / max(_cpu_seconds() - cpu, 1e-9)


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def format_table(result: dict[str, Any]) -> str:
    rates, per_cpu = result["images_per_second"], result["images_per_cpu_second"]
    ratios, cpu_ratios = result["ratios"], result["cpu_ratios"]
    lines = [
        f"data stream: {result['images']} images, {result['workers']} loader workers, "
        f"batch {result['batch_size']}, crop {result['image_size']}",
        f"{'method':<13}{'images/s':>10}{'wds ÷ this':>12}{'goal':>6}"
        f"{'images/cpu-s':>14}{'wds ÷ this':>12}",
    ]
    for name, key, goal in (
        ("webdataset", None, ""),
        ("memory", "vs_memory", "≥0.9"),
        ("imagefolder", "vs_imagefolder", "≥1.0"),
    ):
        wall_ratio = f"{ratios[key]:.2f}" if key else ""
        cpu_ratio = f"{cpu_ratios[key]:.2f}" if key else ""
        lines.append(
            f"{name:<13}{rates[name]:>10.1f}{wall_ratio:>12}{goal:>6}"
            f"{per_cpu[name]:>14.1f}{cpu_ratio:>12}"
        )
    lines.append(f"goals met (images/s): {'yes' if result['goals_met'] else 'no'}")
    return "\n".join(lines)
