"""DST on a model sharded with FSDP2: every tensor the engine keeps follows its parameter.

`ShardedDynamicSparsity` is `DynamicSparsity` (dynamic.py) for a model whose parameters are
DTensors sharded on dim 0 (`torch.distributed.fsdp.fully_shard`). Masks, float masks,
ever-active masks and gradient EMAs are DTensors with their parameter's mesh and placement,
so elementwise masking of weights, ``.grad`` and optimizer state runs on each rank's shard,
and no rank holds a full-size copy. What needs the whole layer is done across ranks:

* the prune-and-grow choice (shard_select.py): exact, equal to the unsharded engine's with
  the same seed, ties to the lower index on fp32 scores;
* counts (statistics, the consistency check, a loaded state's check): shard counts summed
  with one all-reduce;
* initial masks and random scores: drawn at full shape from the shared generator, exactly as
  the unsharded engine draws them (so the same seed gives the same masks), and only this
  rank's rows kept; the full draw is transient, one layer at a time.

The consistency check cannot compare replicas (there are none): it checks that every
layer's active count, summed over the shards, is the allotted one, and that the shared
generator is in the same state on every rank (random growth draws from it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from ft_dist.sparse.consistency import MaskMismatchError, mask_checksum
from ft_dist.sparse.dynamic import DynamicSparsity
from ft_dist.sparse.shard_select import shard_prune_and_grow


class ShardedDynamicSparsity(DynamicSparsity):
    """`DynamicSparsity` for DTensor parameters (FSDP2); same constructor and API."""

    def __init__(self, model, optimizer, config, **kwargs) -> None:
        refused = [
            f"sparsity.{key}={value}"
            for key, value, default in (
                ("channel_sparsity", config.channel_sparsity, 0),
                ("compat", config.compat, "none"),
            )
            if value != default
        ]
        if refused:
            raise ValueError(
                f"{' and '.join(refused)} is not supported on a sharded model "
                "(train.strategy=fsdp2) yet: use train.strategy=ddp"
            )
        super().__init__(model, optimizer, config, **kwargs)

    # ------------------------------------------------------------------ placement
    def _placed(self, mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return like(mask.to(param.device), param)

    def _select(self, name, mask, drop_score, grow_score, num_swap, balanced=False):
        if balanced:  # refused at config time (strategies.check_whole_layer_settings)
            raise ValueError("balanced growth needs whole layers; train.strategy=fsdp2 shards them")
        local_mask = mask.to_local()
        new_local, grown_local = shard_prune_and_grow(
            local_mask,
            local_part(drop_score, mask),
            local_part(grow_score, mask),
            num_swap,
            mask.device_mesh.get_group(),
        )
        newly_active = sum_over_ranks([int((new_local & ~local_mask).sum())], mask)[0]
        # The selection is exact: num_swap dropped and num_swap grown over the whole layer.
        return wrap(new_local, mask), wrap(grown_local, mask), (num_swap, num_swap, newly_active)

    def _count(self, positions: torch.Tensor) -> int:
        return sum_over_ranks([int(local_part(positions, positions).sum())], positions)[0]

    def _active_counts(self, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
        names = list(masks)
        if not names:
            return {}
        local = [int(local_part(masks[n], masks[n]).sum()) for n in names]
        return dict(zip(names, sum_over_ranks(local, masks[names[0]]), strict=True))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The engine's state for torch.distributed.checkpoint: masks and EMAs stay DTensors
        (each rank writes its shards); ``last_update`` becomes a tensor, because a load
        fills only the keys a fresh engine's state already has (rows: layers in order;
        columns: updated, dropped, grown, newly active)."""
        state = super().state_dict()
        state["last_update"] = torch.tensor(
            [[n in self.last_update, *self.last_update.get(n, (0, 0, 0))] for n in self.params],
            dtype=torch.int64,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        rows = state["last_update"]
        if torch.is_tensor(rows):
            state = state | {
                "last_update": {
                    n: row[1:].tolist() for n, row in zip(self.params, rows, strict=True) if row[0]
                }
            }
        super().load_state_dict(state)

    # ------------------------------------------------------------------ checks
    def check_consistency(self) -> int:
        """Every sparse layer's active count over all shards is its allotted count, and the
        shared generator agrees on every rank; returns bytes sent."""
        if not self.config.check_consistency or not self.sparse_names:
            return 0
        counts = self._active_counts({n: self.masks[n] for n in self.sparse_names})
        wrong = {n: (c, self.num_active[n]) for n, c in counts.items() if c != self.num_active[n]}
        if wrong:
            raise MaskMismatchError(
                "sharded masks hold the wrong number of active weights (layer: found, "
                f"expected): {wrong}; the shards' selections have drifted apart"
            )
        state = self.generator.get_state().to(torch.int64)
        digest = int((state * torch.arange(1, state.numel() + 1)).sum())
        mask = self.masks[self.sparse_names[0]]
        low, high = extremes_over_ranks(digest, mask)
        if low != high:
            raise MaskMismatchError(
                "the shared DST generator differs across ranks: random scores would differ "
                "between shards (was every rank seeded with the same sparsity.seed?)"
            )
        return 8 * (len(counts) + 2)

    def mask_checksums(self) -> dict[str, tuple[int, int]]:
        """Per sparse layer, `consistency.mask_checksum` of the whole mask (shards summed):
        equal to the checksum of the unsharded engine's mask."""
        names, local = self.sparse_names, []
        for name in names:
            mask = self.masks[name]
            local.extend(mask_checksum(mask.to_local(), offset=flat_offset(mask)))
        total = sum_over_ranks(local, self.masks[names[0]]) if names else []
        return {n: (total[2 * i], total[2 * i + 1]) for i, n in enumerate(names)}


# ---------------------------------------------------------------------- DTensor helpers
def like(full: torch.Tensor, reference: DTensor) -> DTensor:
    """This rank's shard of a full tensor present on every rank, placed like ``reference``
    (sliced locally: no communication)."""
    return distribute_tensor(full, reference.device_mesh, reference.placements, src_data_rank=None)


def wrap(local: torch.Tensor, reference: DTensor) -> DTensor:
    """A DTensor from this rank's shard, laid out like ``reference``."""
    return DTensor.from_local(
        local,
        reference.device_mesh,
        reference.placements,
        shape=reference.shape,
        stride=reference.stride(),
    )


def local_part(tensor: torch.Tensor, reference: DTensor) -> torch.Tensor:
    """This rank's shard of ``tensor`` (a DTensor like ``reference``, or a full tensor such
    as a random score drawn at full shape)."""
    if not isinstance(tensor, DTensor):
        tensor = like(tensor.to(reference.device), reference)
    elif tensor.placements != reference.placements:
        tensor = tensor.redistribute(reference.device_mesh, reference.placements)
    return tensor.to_local()


def flat_offset(tensor: DTensor) -> int:
    """The flat index of this rank's first position in the whole tensor (dim-0 shards, in
    rank order)."""
    rows = tensor.to_local().shape[0] if tensor.dim() else 0
    group = tensor.device_mesh.get_group()
    counts = [None] * dist.get_world_size(group)
    dist.all_gather_object(counts, rows, group=group)
    return sum(counts[: dist.get_rank(group)]) * math.prod(tensor.shape[1:])


def sum_over_ranks(values: list[int], reference: DTensor) -> list[int]:
    """Elementwise sum of ``values`` over the ranks of ``reference``'s mesh."""
    totals = torch.tensor(values, dtype=torch.int64, device=reference.to_local().device)
    dist.all_reduce(totals, group=reference.device_mesh.get_group())
    return [int(v) for v in totals]


def extremes_over_ranks(value: int, reference: DTensor) -> tuple[int, int]:
    group = reference.device_mesh.get_group()
    device = reference.to_local().device  # nccl reduces CUDA tensors only
    low, high = (torch.tensor([value], device=device) for _ in range(2))
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    return int(low), int(high)
