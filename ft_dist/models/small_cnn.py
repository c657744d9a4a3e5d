"""A small CNN for 28x28 images (MNIST-like), fast enough to train on 2 CPU cores.

Two conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool) and a two-layer classifier. It has four
maskable weights (two convs, two linears), enough to exercise per-layer ERK densities.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(C->32)-pool-conv(32->64)-pool-fc(64*(S/4)^2->128)-fc(128->K)."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"model small-cnn: image_size must be >= 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_small_cnn(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Builder-table entry for "small-cnn"."""
    del name  # one fixed architecture
    return SmallCNN(num_classes, in_channels, image_size)
