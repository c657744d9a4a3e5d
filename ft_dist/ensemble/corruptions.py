"""A small corruption benchmark (SPEC §7) built from torchvision.transforms.v2 ops.

Each corruption maps a batch of float images in [0, 1], shape [B, C, H, W], to a corrupted
batch of the same shape, with five severities. Parameters follow CIFAR-10-C (Hendrycks &
Dietterich, 2019) where it has the corruption. Corruptions act on the raw [0, 1] image,
before the normalisation the model was trained with. Random corruptions draw from a
generator seeded by (seed, name, severity), so a report is reproducible and the global
RNG is left alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

SEVERITIES = (1, 2, 3, 4, 5)

_NOISE_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_JPEG_QUALITY = (80, 65, 58, 50, 40)
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
_ROTATE_DEGREES = (5.0, 10.0, 15.0, 20.0, 25.0)


def _gaussian_noise(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return F.gaussian_noise(images, sigma=_NOISE_SIGMA[severity - 1], clip=True)


def _gaussian_blur(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    sigma = _BLUR_SIGMA[severity - 1]
    size = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


def _contrast(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    # CIFAR-10-C: (x - per-image mean) * c + mean, per channel mean over all pixels.
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    return ((images - mean) * _CONTRAST[severity - 1] + mean).clamp(0.0, 1.0)


def _jpeg(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    as_uint8 = F.to_dtype(images.clamp(0.0, 1.0), torch.uint8, scale=True)
    compressed = F.jpeg(as_uint8.cpu(), quality=_JPEG_QUALITY[severity - 1])
    return F.to_dtype(compressed, images.dtype, scale=True).to(images.device)


def _pixelate(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    factor = _PIXELATE[severity - 1]
    small = [max(1, int(height * factor)), max(1, int(width * factor))]
    reduced = F.resize(images, small, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.resize(reduced, [height, width], interpolation=InterpolationMode.NEAREST)


def _rotate(images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    sign = 1.0 if torch.rand((), generator=generator) < 0.5 else -1.0
    return F.rotate(images, sign * _ROTATE_DEGREES[severity - 1], InterpolationMode.BILINEAR)


Corruption = Callable[[torch.Tensor, int, int], torch.Tensor]

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
    return CORRUPTIONS[name](images, severity, (seed * 1_000_003 + key) % 2**63)


def check_corruptions(names: Sequence[str], severities: Sequence[int]) -> None:
    """Reject unknown corruption names and severities with the allowed values."""
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"--corruptions: unknown {unknown}; choose from {sorted(CORRUPTIONS)} (or 'all')"
        )
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"--severities: {bad} not in {list(SEVERITIES)}")
