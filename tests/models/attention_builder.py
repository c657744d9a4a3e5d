"""A user's own model, as a `path/to/file.py:build` builder: patch embedding, one
nn.MultiheadAttention block (its packed in_proj_weight is a bare parameter), a classifier.

Used by the model-family contract tests and the `ray job submit` test; never imported as a
module by ft_dist (the file is read and shipped as text).
"""

import torch
from torch import nn


class PatchAttention(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, dim: int, patch: int):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads=4, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2) + self.position
        normed = self.norm(tokens)
        tokens = tokens + self.attention(normed, normed, normed, need_weights=False)[0]
        return self.head(tokens.mean(dim=1))


def build(num_classes: int, in_channels: int, image_size: int, dim: int = 32, patch: int = 7):
    return PatchAttention(num_classes, in_channels, image_size, dim, patch)
