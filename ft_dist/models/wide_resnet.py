"""Wide-ResNet-D-W (Zagoruyko & Komodakis 2016), the FreeTickets CIFAR network.

Pre-activation basic blocks (BN-ReLU-conv3x3, twice) in three groups of N = (D-4)/6
blocks with 16W, 32W and 64W channels; the second and third groups start with stride 2.
A 1x1 conv shortcut is used whenever the block changes the channel count or resolution.
WRN-28-10 has 36.5M parameters and about 5.25 GFLOPs (multiply-adds) per 32x32 image.
"""

from __future__ import annotations

import torch
from torch import nn

from ft_dist.models.names import parse_wrn_name


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input, as in the reference WRN.
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-width for small images; global average pooling makes any size >= 8 work."""

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6N+4 with N >= 1, got {depth}")
        num_blocks = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], num_blocks, 1, dropout)
        self.block2 = self._group(widths[1], widths[2], num_blocks, 2, dropout)
        self.block3 = self._group(widths[2], widths[3], num_blocks, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    @staticmethod
    def _group(
        in_planes: int, out_planes: int, num_blocks: int, stride: int, dropout: float
    ) -> nn.Sequential:
        blocks = [WideBasicBlock(in_planes, out_planes, stride, dropout)]
        blocks += [
            WideBasicBlock(out_planes, out_planes, 1, dropout) for _ in range(num_blocks - 1)
        ]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


def build_wide_resnet(
    name: str, num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0
) -> nn.Module:
    """Build "wrn-D-W"; image_size only needs to survive two stride-2 stages (>= 8)."""
    parsed = parse_wrn_name(name)
    if parsed is None:
        raise ValueError(f"model name {name!r} is not of the form wrn-D-W (e.g. wrn-28-10)")
    if image_size < 8:
        raise ValueError(f"model {name}: image_size must be >= 8, got {image_size}")
    depth, width = parsed
    return WideResNet(depth, width, num_classes, in_channels, dropout)
