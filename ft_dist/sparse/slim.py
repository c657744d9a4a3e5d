"""Cut removed channels out of a masked network: smaller dense layers, same function.

A channel of a group (`ft_dist.sparse.structure`) is *dead* in a masked network when every
position of every slice of it is inactive (masked weights: mask False) or zero (biases,
BatchNorm weight and bias, unmasked layers). A dead channel contributes exactly nothing,
so cutting it out (torch-pruning's pruning functions: conv/linear rows and columns,
BatchNorm weight, bias and running statistics, module attributes) gives a smaller network
with the same outputs, whose remaining weights keep their unstructured sparsity. Channel-
level DST (`ft_dist.sparse.channels`) leaves its removed channels dead by construction; an
unstructured ticket may have a few dead channels by chance, and they go too.

    slim = slim_model(model, masks, example)  # cuts the dead channels, model changed in place
    slim.model, slim.masks, slim.removed, slim.kept

Attention heads are cut by hand (torch-pruning prunes head *dimensions*, not heads): the
head's rows of ``qkv`` and columns of ``proj`` go and ``num_heads`` drops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ft_dist.sparse.allocation import strip_wrapper_prefixes
from ft_dist.sparse.structure import ChannelGroup, Structure, trace_structure


def _active_per_channel(
    group: ChannelGroup, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Whether each channel of ``group`` has any active (masked) or nonzero (unmasked)
    position in any of its slices."""
    counts = torch.zeros(group.size, dtype=torch.long)
    for piece in group.slices:
        tensor = masks[piece.name] if piece.name in masks else params[piece.name].detach() != 0
        rows = tensor.transpose(0, piece.dim).reshape(tensor.shape[piece.dim], -1).any(dim=1)
        counts.index_add_(0, piece.channel, rows.cpu()[piece.index].long())
    alive = counts > 0
    return alive


def dead_channels(
    structure: Structure,
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> dict[str, list[int]]:
    """Per removable group, the channels that contribute nothing (module docstring); every
    group keeps at least one channel."""
    removed = {}
    for group in structure.groups:
        alive = _active_per_channel(group, params, masks)
        if not alive.any():
            alive[0] = True
        dead = (~alive).nonzero().flatten().tolist()
        if dead:
            removed[group.name] = dead
    return removed


def keep_vectors(
    structure: Structure, removed: Mapping[str, list[int]], shapes: Mapping[str, tuple]
) -> dict[str, dict[int, torch.Tensor]]:
    """Per parameter and dimension, the positions that stay (True) after ``removed``."""
    vectors: dict[str, dict[int, torch.Tensor]] = {}
    for group in structure.groups:
        gone = torch.zeros(group.size, dtype=torch.bool)
        gone[list(removed.get(group.name, []))] = True
        if not gone.any():
            continue
        for piece in group.slices:
            vector = vectors.setdefault(piece.name, {}).setdefault(
                piece.dim, torch.ones(shapes[piece.name][piece.dim], dtype=torch.bool)
            )
            vector[piece.index[gone[piece.channel]]] = False
    return vectors


def slim_tensor(tensor: torch.Tensor, dims: Mapping[int, torch.Tensor]) -> torch.Tensor:
    for dim, keep in sorted(dims.items()):
        tensor = tensor.index_select(dim, keep.nonzero().flatten().to(tensor.device))
    return tensor


def full_tensor(tensor: torch.Tensor, dims: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """The inverse of `slim_tensor`: ``tensor`` placed at the kept positions of the full
    shape, zeros (False) elsewhere."""
    for dim, keep in sorted(dims.items()):
        shape = list(tensor.shape)
        shape[dim] = len(keep)
        index = keep.nonzero().flatten().to(tensor.device)
        tensor = tensor.new_zeros(shape).index_copy_(dim, index, tensor)
    return tensor


def full_masks(
    model: nn.Module,
    example: torch.Tensor,
    removed: Mapping[str, list[int]],
    masks: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Masks of a model whose ``removed`` channels were cut, in the shapes of ``model`` (the
    full architecture): the cut positions inactive."""
    structure, _ = trace_structure(model, example)
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    vectors = keep_vectors(structure, removed, {n: tuple(p.shape) for n, p in params.items()})
    return {name: full_tensor(mask, vectors.get(name, {})) for name, mask in masks.items()}


def _cut_heads(block: nn.Module, heads: list[int]) -> None:
    head_dim, num_heads = block.head_dim, block.num_heads
    kept = [h for h in range(num_heads) if h not in set(heads)]
    cols = torch.tensor([h * head_dim + j for h in kept for j in range(head_dim)])
    width = num_heads * head_dim
    rows = torch.cat([cols + part * width for part in range(3)])
    qkv, proj = block.qkv, block.proj
    with torch.no_grad():
        qkv.weight = nn.Parameter(qkv.weight.index_select(0, rows.to(qkv.weight.device)))
        if qkv.bias is not None:
            qkv.bias = nn.Parameter(qkv.bias.index_select(0, rows.to(qkv.bias.device)))
        proj.weight = nn.Parameter(proj.weight.index_select(1, cols.to(proj.weight.device)))
    qkv.out_features, proj.in_features = len(rows), len(cols)
    block.num_heads = len(kept)
    if hasattr(block, "attn_dim"):
        block.attn_dim = len(cols)


@dataclass(frozen=True)
class Slim:
    """A slimmed model, the masks of its weights, and per removable group the channels cut
    (``removed``), the channels left (``kept``) and the group's original size."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    removed: dict[str, list[int]]
    kept: dict[str, int]
    sizes: dict[str, int]


def slim_model(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    example: torch.Tensor,
    removed: Mapping[str, list[int]] | None = None,
) -> Slim:
    """Cut ``removed`` channels (default: the dead ones) out of ``model`` in place."""
    structure, dg = trace_structure(model, example)
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    if removed is None:
        removed = dead_channels(structure, params, masks)
    unknown = sorted(set(removed) - {g.name for g in structure.groups})
    if unknown:
        raise ValueError(f"no removable channel group {unknown} in this model")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    vectors = keep_vectors(structure, removed, shapes)
    modules = {strip_wrapper_prefixes(n): m for n, m in model.named_modules()}
    modes = {m: m.training for m in model.modules()}
    for group in structure.groups:
        channels = sorted(removed.get(group.name, []))
        if not channels:
            continue
        if group.kind == "heads":
            _cut_heads(modules[group.name.removesuffix(".heads")], channels)
            continue
        root = modules[group.root]
        prune_out = dg.get_pruner_of_module(root).prune_out_channels
        dg.get_pruning_group(root, prune_out, channels).prune()
    for module, training in modes.items():
        module.training = training
    slim_masks = {name: slim_tensor(mask, vectors.get(name, {})) for name, mask in masks.items()}
    check_slim(model, slim_masks)
    return Slim(
        model,
        slim_masks,
        {k: sorted(v) for k, v in removed.items() if v},
        kept_channels(structure, removed),
        {g.name: g.size for g in structure.groups},
    )


def check_slim(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Every mask has its (cut) parameter's shape, or a RuntimeError naming the first that
    does not."""
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise RuntimeError(
                f"slimming left {name} at {tuple(params[name].shape)} but its mask at "
                f"{tuple(mask.shape)}; the model's channel structure is not supported"
            )


def kept_channels(structure: Structure, removed: Mapping[str, list[int]]) -> dict[str, int]:
    """Channels (or heads) that stay in each removable group."""
    return {g.name: g.size - len(removed.get(g.name, [])) for g in structure.groups}
