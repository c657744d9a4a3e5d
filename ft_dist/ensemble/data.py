"""Evaluation data for ensembles: raw [0, 1] image batches, and the normalisation after.

Splits are read with the one evaluation reader, ``ft_dist.data.evaluation.EvalStream``,
with ``normalize=False``: images are decoded and resized exactly as the training recipe's
evaluation transform does, but stop before the normalisation, so a corruption can act on
the image itself; ``Normalization`` is applied afterwards to in-distribution, corrupted
and OoD inputs alike (SPEC §7: OoD inputs use the training normalisation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ft_dist.data.config import DataConfig
from ft_dist.data.evaluation import EvalStream
from ft_dist.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from ft_dist.ensemble.evaluate import Batches, BatchSource, Normalization

GAUSSIAN_OOD = "gaussian"  # --ood gaussian: the paper's Gaussian-noise OoD set


@dataclass(frozen=True)
class EvalData:
    """A re-iterable evaluation split and the normalisation its models expect."""

    source: BatchSource
    normalization: Normalization
    manifest: Manifest | None  # None for generated data (Gaussian noise)
    sample_shape: tuple[int, int, int]  # (C, H, W) of one decoded image
    num_samples: int

    def cached(self, max_bytes: int = 512 * 2**20) -> EvalData:
        """Decode once and keep the batches in memory when the split fits in `max_bytes`
        (MNIST/CIFAR test sets): corruption passes then skip the decoding."""
        channels, height, width = self.sample_shape
        if self.num_samples * channels * height * width * 4 > max_bytes:
            return self
        batches = list(self.source())
        return replace(self, source=lambda: batches)


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
    (OoD sets) labels are not read, come back as -1, and the split may have any classes.
    """
    # Never more loader processes than shards: the extra ones would only re-read shards.
    num_shards = read_manifest(root or cfg.root, split).num_shards
    update = {"eval_batch_size": batch_size, "loader_workers": min(num_workers, num_shards)}
    stream = EvalStream(
        cfg.model_copy(update=update), split=split, root=root, normalize=False, labels=labeled
    )
    if labeled and not stream.manifest.labeled:
        raise ValueError(
            f"split {split!r} under {root or cfg.root} has no labels; evaluate on a labelled "
            "split (data.test_split) and pass unlabelled sets with --ood"
        )

    def source() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((images, labels) for images, labels, _ in stream)

    return EvalData(
        source,
        Normalization(stream.mean, stream.std),
        stream.manifest,
        stream.sample_shape,
        stream.num_samples,
    )


def gaussian_noise_data(
    num_samples: int,
    sample_shape: tuple[int, int, int],
    normalization: Normalization,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> EvalData:
    """The paper's Gaussian-noise OoD set: clip(N(0, 0.5^2), -1, 1) / 2 + 1/2 per pixel.

    The same images as FreeTickets' ``ood_gaussion`` (datasets.py), in [0, 1] with mean
    0.5, then the run's normalisation like any input; seeded, so reports reproduce.
    """
    if num_samples < 1:
        raise ValueError(f"the Gaussian-noise OoD set needs >= 1 sample, got {num_samples}")

    def source() -> Batches:
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            noise = torch.randn(count, *sample_shape, generator=generator) * 0.5
            yield noise.clamp(-1.0, 1.0) * 0.5 + 0.5, torch.full((count,), -1)

    return EvalData(source, normalization, None, sample_shape, num_samples)


def locate_split(spec: str, default_root: str, default_split: str = "ood") -> tuple[str, str]:
    """(root, split) from an --ood argument: a split dir, a dataset root, or a split name."""
    path = Path(spec)
    if (path / MANIFEST_NAME).is_file():
        return str(path.parent), path.name
    if (path / default_split / MANIFEST_NAME).is_file():
        return str(path), default_split
    if "/" not in spec and "://" not in spec:
        return default_root, spec
    raise FileNotFoundError(
        f"--ood {spec}: neither a split directory with manifest.json, nor a dataset root with "
        f"a {default_split!r} split, nor a split name under {default_root}, nor "
        f"{GAUSSIAN_OOD!r}; write one with `ft-dist shards` (e.g. `ft-dist shards mnist` "
        "writes an 'ood' split, `ft-dist shards svhn --split ood` SVHN's test set)"
    )
