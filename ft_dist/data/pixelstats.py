"""Per-channel pixel mean/std of a split, accumulated while its shards are written.

A split may mix modes (ImageNet: mostly RGB, some grayscale and CMYK) and which mode the
model sees is only known once every image has been counted (the majority mode). So each
image is counted in RGB as first moments (3 sums) and second moments (the 3x3 matrix of
channel products); a grayscale image counts as R = G = B. That gives both answers exactly:
RGB statistics directly, and grayscale ones for L = w . (R, G, B) with PIL's ITU-R 601-2
luma weights w, since E[L] = w . E[x] and E[L^2] = w^T E[x x^T] w.

Large images are sampled on a regular pixel grid (at most ~65k pixels each), which keeps
the estimate unbiased and the cost small next to decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])  # PIL's convert("L") weights
MAX_PIXELS_PER_IMAGE = 1 << 16
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def model_mode(channels: int) -> str:
    """The PIL mode a derived recipe feeds: grayscale for 1-2 channel images, else RGB."""
    return "L" if channels <= 2 else "RGB"


@dataclass
class PixelMoments:
    """Sums of pixel values (0..255) and of their channel products, over ``count`` pixels."""

    count: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(3))
    products: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))

    @classmethod
    def of_array(cls, pixels: np.ndarray, *, rgb: bool) -> PixelMoments:
        """Moments of uint8 pixels shaped [..., H, W, 3] (``rgb``) or [..., H, W] (grayscale)."""
        values = np.asarray(pixels, dtype=np.float64)
        if rgb and values.shape[-1:] != (3,):
            raise ValueError(f"RGB pixels must end in 3 channels, got shape {values.shape}")
        if not rgb:
            gray = values.reshape(-1)
            total, square = gray.sum(), float(gray @ gray)
            return cls(gray.size, np.full(3, total), np.full((3, 3), square))
        flat = values.reshape(-1, 3)
        return cls(len(flat), flat.sum(axis=0), flat.T @ flat)

    @classmethod
    def of_image(cls, image: Any) -> PixelMoments:
        """Moments of a decoded PIL image, sampled on a grid when it is large."""
        gray = image.mode in _GRAY_MODES
        pixels = np.asarray(image.convert("L" if gray else "RGB"))
        stride = math.ceil(math.sqrt(pixels.shape[0] * pixels.shape[1] / MAX_PIXELS_PER_IMAGE))
        sampled = pixels[::stride, ::stride] if stride > 1 else pixels
        return cls.of_array(sampled, rgb=not gray)

    def add_(self, other: PixelMoments) -> PixelMoments:
        self.count += other.count
        self.sums = self.sums + other.sums
        self.products = self.products + other.products
        return self

    def stats(self, mode: str) -> dict[str, Any]:
        """``{"mode", "mean", "std", "num_pixels"}`` in [0, 1] units for mode L or RGB."""
        if self.count == 0:
            raise ValueError("no pixels were counted")
        mean = self.sums / self.count
        second = self.products / self.count
        if mode == "L":
            mean_l = float(LUMA @ mean)
            means, variances = [mean_l], [float(LUMA @ second @ LUMA) - mean_l**2]
        else:
            means, variances = mean.tolist(), (np.diag(second) - mean**2).tolist()
        return {
            "mode": mode,
            "mean": [round(m / 255.0, 6) for m in means],
            "std": [round(math.sqrt(max(v, 0.0)) / 255.0, 6) for v in variances],
            "num_pixels": self.count,
        }
