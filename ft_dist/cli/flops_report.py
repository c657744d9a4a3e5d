"""What both modes of `ft-dist flops` share (flops.py: flags; flops_config.py: --config):
the per-layer FLOPs report of a model built on the meta device, and its table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ft_dist.sparse.flops import FlopsReport

SHAPE_KEYS = ("num_classes", "in_channels", "image_size")
SHAPE_HINTS = {
    "num_classes": "e.g. model.num_classes=100 for CIFAR-100, 1000 for ImageNet",
    "in_channels": "model.in_channels=3 for RGB, 1 for grayscale",
    "image_size": "e.g. model.image_size=32 for CIFAR, 224 for ImageNet, 28 for MNIST",
}


def model_flops_report(
    model: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    density: float,
    sparse_init: str = "erk",
    dense_layers: tuple[str, ...] = (),
    *,
    kwargs: dict | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> FlopsReport:
    """Build `model` on the meta device, allocate ERK/ER/uniform densities over the weights
    the sparsity rule selects (default rule, include/exclude), count FLOPs per layer."""
    import torch

    from ft_dist.models import build_model
    from ft_dist.sparse.flops import allocated_flops_report

    with torch.device("meta"):
        network = build_model(model, num_classes, in_channels, image_size, kwargs)
    input_shape = (in_channels, image_size, image_size)
    return allocated_flops_report(
        network, input_shape, density, sparse_init, dense_layers, include, exclude
    )


def human(flops: float) -> str:
    """1234567 -> '1.23M' (FLOPs, 1 multiply-add = 2 FLOPs)."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.2f}{unit}"
    return f"{flops:.0f}"


def format_layers(report: FlopsReport) -> str:
    width = max([len(layer.name) for layer in report.layers] + [5])
    header = f"{'layer':<{width}}  {'shape':<20} {'density':>8} {'dense':>10} {'sparse':>10}"
    lines = [header, "-" * len(header)]
    for layer in report.layers:
        shape = "x".join(str(dim) for dim in layer.shape)
        lines.append(
            f"{layer.name:<{width}}  {shape:<20} {layer.density:>8.4f} "
            f"{human(layer.dense_flops):>10} {human(layer.sparse_flops):>10}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'forward FLOPs per example':<{width + 30}} {human(report.dense_forward_flops):>10} "
        f"{human(report.sparse_forward_flops):>10}"
    )
    lines.append(f"forward FLOPs ratio (sparse/dense): {report.forward_flops_ratio:.4f}")
    return "\n".join(lines)
