"""Evaluation data for ensembles: raw [0, 1] image batches from `ft-dist shards` splits.

The models were trained on normalised tensors. Evaluation decodes and resizes exactly as
the training recipe's *evaluation* transform does, but stops before the normalisation,
so a corruption can act on the image itself; `Normalization` is applied afterwards to
in-distribution, corrupted and OoD inputs alike (SPEC §7: OoD inputs use the training
normalisation). Shards are split over DataLoader workers by index, so every sample is
evaluated exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ft_dist.data.config import DataConfig
from ft_dist.data.decoding import BatchDecoder, RawItem, resolve_recipe
from ft_dist.data.manifest import Manifest, read_manifest
from ft_dist.data.reader import iter_shard
from ft_dist.data.transforms import RECIPES, build_transform, output_size
from ft_dist.ensemble.evaluate import Batches, BatchSource, Normalization


@dataclass(frozen=True)
class EvalData:
    """A re-iterable evaluation split and the normalisation its models expect."""

    source: BatchSource
    normalization: Normalization
    manifest: Manifest
    sample_shape: tuple[int, int, int]  # (C, H, W) of one decoded image

    def cached(self, max_bytes: int = 512 * 2**20) -> EvalData:
        """Decode once and keep the batches in memory when the split fits in `max_bytes`
        (MNIST/CIFAR test sets): corruption passes then skip the decoding."""
        channels, height, width = self.sample_shape
        if self.manifest.num_samples * channels * height * width * 4 > max_bytes:
            return self
        batches = list(self.source())
        return replace(self, source=lambda: batches)


def raw_eval_transform(recipe: str, size: int, native_size: int) -> Any:
    """The recipe's evaluation transform without its final Normalize: output in [0, 1]."""
    from torchvision.transforms import v2

    transform = build_transform(recipe, train=False, size=size, native_size=native_size)
    steps = list(getattr(transform, "transforms", []))
    if not steps or not isinstance(steps[-1], v2.Normalize):
        raise RuntimeError(
            f"recipe {recipe!r}: expected its eval transform to end with Normalize, "
            f"got {steps[-1:]}; ft_dist.data.transforms changed, update ft_dist.ensemble.data"
        )
    return v2.Compose(steps[:-1])


class _ShardBatches(IterableDataset):
    """Batches of one split; DataLoader worker k reads shards k, k + W, k + 2W, ..."""

    def __init__(self, manifest: Manifest, decoder: BatchDecoder, batch_size: int) -> None:
        self.manifest, self.decoder, self.batch_size = manifest, decoder, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        index, count = (0, 1) if worker is None else (worker.id, worker.num_workers)
        items: list[RawItem] = []
        for shard_index in range(index, self.manifest.num_shards, count):
            url = self.manifest.shard_url(shard_index)
            for _, key, sample in iter_shard(url, self.manifest.shards[shard_index]):
                items.append((url, key, sample))
                if len(items) == self.batch_size:
                    yield self.decoder.decode(items)
                    items = []
        if items:
            yield self.decoder.decode(items)


def split_data(
    cfg: DataConfig,
    split: str,
    *,
    root: str | None = None,
    labeled: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
) -> EvalData:
    """Raw batches of `split` under `root` (default cfg.root), shaped like cfg's training data.

    The recipe and output size come from the *training* split, so OoD shards of another
    size or mode are converted to what the models were trained on. With `labeled=False`
    (OoD sets) labels are not read and come back as -1.
    """
    train_manifest = read_manifest(cfg.root, cfg.train_split)
    recipe = resolve_recipe(cfg, train_manifest)
    size = output_size(recipe, cfg.image_size, train_manifest.image_size)
    manifest = read_manifest(root or cfg.root, split)
    if labeled and not manifest.labeled:
        raise ValueError(
            f"split {split!r} under {root or cfg.root} has no labels; evaluate on a labelled "
            "split (data.test_split) and pass unlabelled sets with --ood"
        )
    decoder = BatchDecoder(
        mode=RECIPES[recipe].mode,
        transform=raw_eval_transform(recipe, size, manifest.image_size),
        num_classes=train_manifest.num_classes,
        labeled=labeled,
        skip_corrupt=cfg.skip_corrupt,
    )
    dataset = _ShardBatches(manifest, decoder, batch_size)
    workers = min(num_workers, manifest.num_shards)

    def source() -> Batches:
        return DataLoader(dataset, batch_size=None, num_workers=workers)

    spec = RECIPES[recipe]
    return EvalData(
        source, Normalization(spec.mean, spec.std), manifest, (spec.channels, size, size)
    )


def locate_split(spec: str, default_root: str, default_split: str = "ood") -> tuple[str, str]:
    """(root, split) from an --ood argument: a split dir, a dataset root, or a split name."""
    from pathlib import Path

    path = Path(spec)
    if (path / "manifest.json").is_file():
        return str(path.parent), path.name
    if (path / default_split / "manifest.json").is_file():
        return str(path), default_split
    if "/" not in spec and "://" not in spec:
        return default_root, spec
    raise FileNotFoundError(
        f"--ood {spec}: neither a split directory with manifest.json, nor a dataset root with "
        f"a {default_split!r} split, nor a split name under {default_root}; write one with "
        "`ft-dist shards` (e.g. `ft-dist shards mnist` writes an 'ood' split)"
    )
