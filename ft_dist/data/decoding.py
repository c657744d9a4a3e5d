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
from ft_dist.data.reader import (
    IMAGE_EXTENSIONS,
    DataError,
    Sample,
    decode_image,
    decode_png_tensor,
    read_label,
)
from ft_dist.data.recipes import recipe_for_split, resolve_recipe
from ft_dist.data.transforms import (
    Recipe,
    recipe_transform,
    split_per_batch,
    takes_tensors,
    tensor_steps,
)

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
    # "cpu": PIL in whichever process decodes; "cuda": torchvision batched decode (nvJPEG)
    # and the transform on the current GPU, in the rank itself (data.decode_device).
    device: str = "cpu"
    # The CPU path runs ``transform`` in two halves: geometry + ToImage per sample (uint8),
    # then dtype + normalisation once per batch (transforms.split_per_batch): same floats.
    # 8-bit PNGs already in the mode skip PIL when the per-sample half is exact on tensors.
    per_sample: Callable[[Any], Any] = field(init=False, repr=False)
    per_batch: Callable[[Any], Any] | None = field(init=False, repr=False)
    png_tensors: bool = field(init=False, repr=False)
    tensor_steps: Callable[[Any], Any] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.per_sample, self.per_batch = split_per_batch(self.transform)
        self.png_tensors = self.per_batch is not None and takes_tensors(self.per_sample)
        # On a decoded tensor ToImage does nothing: without other steps, skip v2's dispatch.
        self.tensor_steps = tensor_steps(self.per_sample) if self.png_tensors else None

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
        # The GPU decodes the training stream only: evaluation (validation, `ft-dist
        # evaluate`, possibly on a machine without a GPU) keeps the CPU path.
        device = cfg.decode_device if train else "cpu"
        if device == "cuda":
            _check_gpu_decode(cfg)
        recipe = recipe_for_split(info.resolved_recipe, manifest)
        return cls(
            mode=recipe.mode,
            transform=recipe_transform(recipe, train=train, normalize=normalize),
            num_classes=info.num_classes,
            labeled=manifest.labeled and labeled,
            # Evaluation stays strict: a replaced sample would be scored under another's
            # index, and exact metrics are the point of the eval stream.
            skip_corrupt=cfg.skip_corrupt and train,
            device=device,
        )

    def decode(self, items: list[RawItem], seed: int | None = None) -> tuple[Any, Any]:
        """``(images [B, C, H, W] float32, labels [B] int64)``; labels are -1 if unlabelled.

        With ``seed`` the augmentation draws from a forked torch RNG seeded with it,
        leaving the caller's RNG untouched (matters when decoding in the training process).
        """
        import torch

        if seed is None:
            return self._decode(items)
        # manual_seed reseeds CUDA too: on a GPU decoder, restore its generator afterwards.
        devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._decode(items)

    def _decode(self, items: list[RawItem]) -> tuple[Any, Any]:
        import torch
        from torch.utils.data import default_collate

        if self.device != "cpu":
            return self._decode_on_device(items)
        images: list[Any] = []
        labels: list[int] = []
        for url, key, sample in items:
            label = self._label(url, key, sample)
            try:
                decoded = decode_png_tensor(sample, self.mode) if self.png_tensors else None
                if decoded is None:
                    image = self.per_sample(decode_image(sample, self.mode))
                else:
                    image = self.tensor_steps(decoded) if self.tensor_steps else decoded
            except Exception as error:  # PIL: OSError, SyntaxError, ValueError, ...
                image = self._corrupt(url, key, error)
            images.append(image)
            labels.append(label)
        _replace_corrupt(images, labels, items)
        # default_collate stacks straight into shared memory inside a loader worker,
        # saving the copy torch.stack + queue transfer would make.
        batch = default_collate([image.as_subclass(torch.Tensor) for image in images])
        if self.per_batch is not None:
            batch = self.per_batch(batch)
        return batch, torch.tensor(labels, dtype=torch.int64)

    def _decode_on_device(self, items: list[RawItem]) -> tuple[Any, Any]:
        """Decode the batch at once on the GPU, then transform the device tensors (the
        random crop/flip parameters come from the same CPU RNG as on the PIL path)."""
        import torch

        labels = [self._label(url, key, sample) for url, key, sample in items]
        decoded = decode_tensors([sample for _, _, sample in items], self.mode, self.device)
        images: list[Any] = []
        for (url, key, _), image in zip(items, decoded, strict=True):
            try:
                if isinstance(image, Exception):
                    raise image
                images.append(self.transform(image))
            except Exception as error:  # torchvision: RuntimeError, ValueError, ...
                images.append(self._corrupt(url, key, error))
        _replace_corrupt(images, labels, items)
        batch = torch.stack([image.as_subclass(torch.Tensor) for image in images])
        return batch, torch.tensor(labels, dtype=torch.int64)

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


def _check_gpu_decode(cfg: DataConfig) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "data.decode_device=cuda, but this machine has no CUDA device; "
            "use data.decode_device=cpu"
        )
    if cfg.loader_workers or cfg.pin_memory:
        raise ValueError(
            "data.decode_device=cuda decodes in the training process (CUDA cannot start in "
            "forked loader workers, and GPU batches cannot be pinned): set "
            "data.loader_workers=0 and data.pin_memory=false"
        )


def decode_tensors(samples: list[Sample], mode: str, device: Any) -> list[Any]:
    """Each sample's image as a uint8 [C, H, W] tensor on ``device``, or the exception that
    stopped it. JPEGs go through one batched ``decode_jpeg`` (nvJPEG on CUDA); other formats
    are decoded on the CPU and moved."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    read_mode = ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB
    decoded: list[Any] = [None] * len(samples)
    positions, jpegs = [], []
    for index, sample in enumerate(samples):
        data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if data is None:
            decoded[index] = DataError(f"no image member (one of {IMAGE_EXTENSIONS})")
            continue
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data[:3] == b"\xff\xd8\xff":
            positions.append(index)
            jpegs.append(encoded)
            continue
        try:
            decoded[index] = decode_image(encoded, mode=read_mode).to(device)
        except Exception as error:  # noqa: BLE001 - reported per sample by the caller
            decoded[index] = error
    for index, image in zip(positions, _decode_jpegs(jpegs, read_mode, device), strict=True):
        decoded[index] = image
    return decoded


def _decode_jpegs(jpegs: list[Any], read_mode: Any, device: Any) -> list[Any]:
    from torchvision.io import decode_jpeg

    if not jpegs:
        return []
    try:
        return list(decode_jpeg(jpegs, mode=read_mode, device=device))
    except Exception:  # noqa: BLE001 - one bad image fails the batch: find it alone
        results: list[Any] = []
        for data in jpegs:
            try:
                results.append(decode_jpeg(data, mode=read_mode, device=device))
            except Exception as error:  # noqa: BLE001
                results.append(error)
        return results
