"""A user's small patch transformer, as `path/to/patch_transformer.py:build` names it:
patch embedding, pre-norm blocks of nn.MultiheadAttention (a packed ``in_proj_weight``) and
an MLP, a linear head on the mean token. The model of issue 29's failing recipe (2 blocks,
dim 64) for `ft-dist bench quality` and the churn tests; ft_dist names it by file path,
as a user's own builder is named, and never imports it as a module."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attention(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class PatchTransformer(nn.Module):
    def __init__(self, num_classes, in_channels, image_size, dim, depth, heads, patch) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    patch: int = 4,
) -> nn.Module:
    return PatchTransformer(num_classes, in_channels, image_size, dim, depth, heads, patch)
