"""Datasets that arrive as uint8 pixel arrays (CIFAR pickles, SVHN .mat), as PNG samples.

PNG is lossless, so the shards hold exactly the published pixels; each sample also
carries its pixel moments for the split's mean/std (ft_dist.data.pixelstats).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from ft_dist.data.pixelstats import PixelMoments
from ft_dist.data.shards import EncodedImage


def encode_arrays(images: np.ndarray, labels: np.ndarray | None) -> Iterator[EncodedImage]:
    """PNG samples of uint8 images [N, H, W, 3] (RGB) or [N, H, W] (L), one at a time."""
    from PIL import Image

    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images [N, H, W(, 3)], got {images.dtype} {images.shape}")
    rgb = images.ndim == 4
    mode = "RGB" if rgb else "L"
    height, width = images.shape[1:3]
    for index, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels), mode=mode).save(buffer, format="PNG")
        label = None if labels is None else int(labels[index])
        moments = PixelMoments.of_array(pixels, rgb=rgb)
        yield EncodedImage("png", buffer.getvalue(), label, width, height, mode, moments)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64 in 0..num_classes-1, or an error naming ``where``."""
    values = np.asarray(labels)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"{where}: labels must be a 1-D integer list, got {values.dtype} {values.shape}"
        )
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"{where}: labels {int(values.min())}..{int(values.max())} fall outside the "
            f"{num_classes} classes 0..{num_classes - 1}"
        )
    return values.astype(np.int64)
