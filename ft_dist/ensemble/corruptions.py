"""A small corruption benchmark (SPEC §7) built from torchvision.transforms.v2 ops.

Each corruption maps a batch of float images in [0, 1], shape [B, C, H, W], to a corrupted
batch of the same shape, with five severities; their names and strengths are the torch-free
table in corruption_table.py. Corruptions act on the raw [0, 1] image, before the
normalisation the model was trained with. Random corruptions draw from a generator seeded
by (seed, name, severity), so a report is reproducible and the global RNG is left alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from ft_dist.ensemble.corruption_table import CORRUPTION_LEVELS, check_corruptions


def _gaussian_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return F.gaussian_noise(images, sigma=sigma, clip=True)


def _gaussian_blur(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    size = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


def _contrast(images: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    # CIFAR-10-C: (x - per-image mean) * c + mean, per channel mean over all pixels.
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    return ((images - mean) * factor + mean).clamp(0.0, 1.0)


def _jpeg(images: torch.Tensor, quality: float, seed: int) -> torch.Tensor:
    as_uint8 = F.to_dtype(images.clamp(0.0, 1.0), torch.uint8, scale=True)
    compressed = F.jpeg(as_uint8.cpu(), quality=quality)
    return F.to_dtype(compressed, images.dtype, scale=True).to(images.device)


def _pixelate(images: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    small = [max(1, int(height * factor)), max(1, int(width * factor))]
    reduced = F.resize(images, small, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.resize(reduced, [height, width], interpolation=InterpolationMode.NEAREST)


def _rotate(images: torch.Tensor, degrees: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    sign = 1.0 if torch.rand((), generator=generator) < 0.5 else -1.0
    return F.rotate(images, sign * degrees, InterpolationMode.BILINEAR)


# (images, the severity's level from CORRUPTION_LEVELS, seed) -> corrupted images
Corruption = Callable[[torch.Tensor, float, int], torch.Tensor]

# The implementation of every CORRUPTION_LEVELS entry (tests/ensemble/test_corruptions.py
# checks that the two have the same names).
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "jpeg": _jpeg,
    "pixelate": _pixelate,
    "rotate": _rotate,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption `name` at `severity` (1..5) to [B, C, H, W] float images in [0, 1]."""
    check_corruptions([name], [severity])
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"corruptions take float [B, C, H, W] images, got {images.dtype} {tuple(images.shape)}"
        )
    key = zlib.crc32(f"{name}:{severity}".encode())
    level = CORRUPTION_LEVELS[name][severity - 1]
    return CORRUPTIONS[name](images, level, (seed * 1_000_003 + key) % 2**63)
