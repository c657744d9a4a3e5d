"""What the model sees: dataset facts from the manifest, and batch decoding + augmentation.

``describe(cfg)`` is how a run fills the model's ``num_classes`` / ``in_channels`` /
``image_size`` from the data (ModelConfig fields left as None). ``BatchDecoder`` turns raw
tar samples into one ``(images, labels)`` batch; seeding the augmentation per batch makes
a batch's content a function of (seed, epoch, rank, batch index) only, so a resumed epoch
reproduces the uninterrupted one whichever loader worker decodes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ft_dist.data.config import DataConfig
from ft_dist.data.manifest import Manifest, read_manifest
from ft_dist.data.reader import DataError, Sample, decode_image, read_label
from ft_dist.data.recipes import recipe_for_split, resolve_recipe
from ft_dist.data.transforms import Recipe, recipe_transform

log = logging.getLogger(__name__)
# (shard url, sample key, sample) as read from a tar shard.
RawItem = tuple[str, str, Sample]


@dataclass(frozen=True)
class DataInfo:
    """The shape of the data a run trains on, as the model needs it."""

    num_classes: int
    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    recipe: str  # a named recipe, or "derived" (ft_dist.data.recipes)
    num_train_samples: int
    resolved_recipe: Recipe  # mode, size, augmentation, normalisation


def describe(cfg: DataConfig) -> DataInfo:
    """Dataset facts from the training split's manifest plus the config's recipe/size;
    the recipe is named by the config or manifest, or derived (ft_dist.data.recipes)."""
    manifest = read_manifest(cfg.root, cfg.train_split)
    if not manifest.labeled:
        raise ValueError(
            f"split {cfg.train_split!r} under {cfg.root} has no labels (an OoD set?); "
            "data.train_split must name a labelled split"
        )
    recipe = resolve_recipe(cfg, manifest)
    return DataInfo(
        num_classes=manifest.num_classes,
        classes=manifest.classes,
        in_channels=recipe.channels,
        image_size=recipe.size,
        recipe=recipe.name,
        num_train_samples=manifest.num_samples,
        resolved_recipe=recipe,
    )


def check_same_classes(manifest: Manifest, info: DataInfo) -> None:
    """A labelled split must index the training split's classes, or its labels lie."""
    if manifest.labeled and manifest.classes != info.classes:
        raise ValueError(
            f"split {manifest.split!r} under {manifest.root} has a different class list from "
            "the training split; rewrite it after train (it then takes train's classes) or "
            "with --classes-from TRAIN_SPLIT_DIR"
        )


@dataclass
class BatchDecoder:
    """Decode + transform raw samples into a batch; corrupt samples raise or are replaced."""

    mode: str
    transform: Callable[[Any], Any]
    num_classes: int
    labeled: bool
    skip_corrupt: bool
    skipped: int = field(default=0)

    @classmethod
    def create(
        cls,
        cfg: DataConfig,
        info: DataInfo,
        manifest: Manifest,
        *,
        train: bool,
        normalize: bool = True,
        labeled: bool = True,
    ) -> BatchDecoder:
        """Decoder for ``manifest``'s samples with the run's recipe. ``normalize=False``
        leaves pixels in [0, 1] (corruptions act on those); ``labeled=False`` ignores the
        split's labels (-1), e.g. an OoD set with classes of its own."""
        # Load PIL's image plugins (and webdataset's gopen) here, once: forked loader
        # workers inherit them instead of importing them again every epoch.
        import webdataset  # noqa: F401
        from PIL import Image

        Image.preinit()
        recipe = recipe_for_split(info.resolved_recipe, manifest)
        return cls(
            mode=recipe.mode,
            transform=recipe_transform(recipe, train=train, normalize=normalize),
            num_classes=info.num_classes,
            labeled=manifest.labeled and labeled,
            # Evaluation stays strict: a replaced sample would be scored under another's
            # index, and exact metrics are the point of the eval stream.
            skip_corrupt=cfg.skip_corrupt and train,
        )

    def decode(self, items: list[RawItem], seed: int | None = None) -> tuple[Any, Any]:
        """``(images [B, C, H, W] float32, labels [B] int64)``; labels are -1 if unlabelled.

        With ``seed`` the augmentation draws from a forked torch RNG seeded with it,
        leaving the caller's RNG untouched (matters when decoding in the training process).
        """
        import torch

        if seed is None:
            return self._decode(items)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._decode(items)

    def _decode(self, items: list[RawItem]) -> tuple[Any, Any]:
        import torch
        from torch.utils.data import default_collate

        images: list[Any] = []
        labels: list[int] = []
        for url, key, sample in items:
            label = self._label(url, key, sample)
            try:
                image = self.transform(decode_image(sample, self.mode))
            except Exception as error:  # PIL: OSError, SyntaxError, ValueError, ...
                image = self._corrupt(url, key, error)
            images.append(image)
            labels.append(label)
        _replace_corrupt(images, labels, items)
        # default_collate stacks straight into shared memory inside a loader worker,
        # saving the copy torch.stack + queue transfer would make.
        return default_collate(images), torch.tensor(labels, dtype=torch.int64)

    def _label(self, url: str, key: str, sample: Sample) -> int:
        if not self.labeled:
            return -1
        try:
            return read_label(sample, self.num_classes)
        except DataError as error:
            raise DataError(f"shard {url} sample {key} {error}; rewrite the shards") from None

    def _corrupt(self, url: str, key: str, error: Exception) -> None:
        if not self.skip_corrupt:
            raise DataError(
                f"shard {url} sample {key}: cannot decode its image ({type(error).__name__}: "
                f"{error}); rewrite the shard, or set data.skip_corrupt=true to skip and count"
            ) from error
        self.skipped += 1
        log.warning("skipped corrupt sample %s in %s (%d so far)", key, url, self.skipped)
        return None


def _replace_corrupt(images: list[Any], labels: list[int], items: list[RawItem]) -> None:
    """Fill skipped samples with copies of a good sample of the same batch.

    Keeping the batch size (and so the step count and resume positions) fixed matters
    more than the rare duplicate.
    """
    good = [i for i, image in enumerate(images) if image is not None]
    if len(good) == len(images):
        return
    if not good:
        keys = ", ".join(f"{key} in {url}" for url, key, _ in items[:3])
        raise DataError(f"every sample of a batch is corrupt ({keys}, ...); rewrite the shards")
    for i, image in enumerate(images):
        if image is None:
            source = min(good, key=lambda j: abs(j - i))
            images[i], labels[i] = images[source], labels[source]
