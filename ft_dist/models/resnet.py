"""torchvision ResNets, with a CIFAR-style stem for small images.

The ImageNet stem (7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 8x8 before the
first block, which wastes most of the network on CIFAR-sized inputs. For images of at most
`SMALL_IMAGE_MAX` pixels per side we use the usual CIFAR replacement: one 3x3 stride-1 conv
and no max-pool (as in the FreeTickets / RigL CIFAR code). Everything else is torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import resnet

SMALL_IMAGE_MAX = 64
_TORCHVISION_RESNETS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}


def build_resnet(
    name: str, num_classes: int, in_channels: int, image_size: int, **kwargs
) -> nn.Module:
    """A randomly initialised torchvision ResNet (`name` in resnet18/34/50); ``kwargs`` go
    to torchvision (e.g. zero_init_residual)."""
    if name not in _TORCHVISION_RESNETS:
        raise ValueError(f"unknown ResNet {name!r}: choose one of {sorted(_TORCHVISION_RESNETS)}")
    if image_size < 8:
        raise ValueError(f"model {name}: image_size must be >= 8, got {image_size}")
    model = _TORCHVISION_RESNETS[name](weights=None, num_classes=num_classes, **kwargs)
    if image_size <= SMALL_IMAGE_MAX:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # A replaced stem gets torchvision's init for convs instead of nn.Conv2d's default.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
