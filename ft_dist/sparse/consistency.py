"""Cross-rank mask checks (SPEC §9): every rank of a member must hold bit-identical masks.

A mask's checksum is the number of active positions plus a positional hash of them, so a
single moved, added or removed weight changes it. The per-layer checksums are reduced with
MIN and MAX: any layer where they differ is named in the error.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from ft_dist.utils import is_distributed

_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant
_HASH_MODULUS = 4294967291  # largest prime below 2**32: keeps every term in int64 range


class MaskMismatchError(RuntimeError):
    """Masks differ between ranks: the replicas of one member have drifted apart."""


def mask_checksum(mask: torch.Tensor, offset: int = 0) -> tuple[int, int]:
    """(number of active positions, sum of their hashes); both fit in int64 for any layer
    below 2**31 weights. ``offset``: the flat index of ``mask``'s first position in its
    layer (a shard: the shards' checksums then add up to the whole layer's)."""
    positions = mask.reshape(-1).nonzero().squeeze(1).to(torch.int64) + offset
    hashed = (positions * _HASH_MULTIPLIER) % _HASH_MODULUS
    return int(positions.numel()), int(hashed.sum())


def verify_masks_identical(
    masks: Mapping[str, torch.Tensor], group: dist.ProcessGroup | None = None
) -> int:
    """Raise MaskMismatchError naming every layer whose mask differs across ranks.

    Returns the number of bytes this rank sent (two int64 reductions over the layers), so the
    cost of keeping masks consistent can be reported. A no-op outside torch.distributed.
    """
    if not masks or not is_distributed(group):
        return 0
    names = list(masks)
    device = _collective_device(group, next(iter(masks.values())).device)
    checksums = torch.tensor(
        [mask_checksum(masks[n]) for n in names], dtype=torch.int64, device=device
    )
    low, high = checksums.clone(), checksums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    layer_differs = (low != high).any(dim=1)
    differing = [names[i] for i in torch.nonzero(layer_differs).flatten().tolist()]
    if differing:
        raise MaskMismatchError(
            f"sparse masks differ across ranks in layer(s) {differing} (rank {dist.get_rank(group)}); "
            "masks must come from the same seed and the all-reduced gradient on every rank"
        )
    return 2 * checksums.numel() * checksums.element_size()


def broadcast_masks_(masks: Mapping[str, torch.Tensor], src: int = 0, group=None) -> None:
    """Overwrite every rank's masks with rank ``src``'s (used when restoring from one rank)."""
    if not is_distributed(group):
        return
    device = _collective_device(group, next(iter(masks.values())).device)
    for mask in masks.values():
        buffer = mask.to(device=device, dtype=torch.uint8)
        dist.broadcast(buffer, src=src, group=group)
        mask.copy_(buffer.to(mask.device, dtype=torch.bool))


def _collective_device(group, fallback: torch.device) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if fallback.type != "cpu" else fallback
