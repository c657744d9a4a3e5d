"""Users' models with operations that mix channels where the dependency trace cannot see it
(a `path/to/file.py:callable` builder for the trial-cut tests, tests/sparse/test_verify.py)."""

import torch
from torch import nn


class ChannelSoftmax(nn.Module):
    """conv -> softmax over the channels -> conv: a zeroed channel still takes exp(0) = 1."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.softmax(self.conv2(x), dim=1)
        x = torch.relu(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


class SpatialGate(nn.Module):
    """CBAM-style spatial attention: the gate reads the mean over channels, which a zeroed
    channel lowers."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.gate = nn.Conv2d(2, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        summary = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        x = x * torch.sigmoid(self.gate(summary))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def softmax(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ChannelSoftmax(num_classes, in_channels)


def spatial_gate(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SpatialGate(num_classes, in_channels)


class FixedSplit(nn.Module):
    """Mixed kernels as in MixNet: the channels split into parts of fixed sizes."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 1)
        self.small = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.large = nn.Conv2d(5, 5, 5, padding=2, groups=5)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(torch.relu(self.conv1(x)), [3, 5], dim=1)
        x = torch.cat([self.small(a), self.large(b)], dim=1)
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def fixed_split(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return FixedSplit(num_classes, in_channels)
