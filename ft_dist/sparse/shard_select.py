"""Exact prune-and-grow of one layer whose weights are split across ranks (FSDP2).

RigL's choice is a top-k over the whole layer. Here every rank holds a contiguous piece of
the layer's flat positions (dim-0 shards, in rank order), so the global choice is made from
each rank's ``k`` best local candidates: the global ``k`` best are among them. Candidates
are all-gathered in rank order and sorted stably, so equal scores go to the lower rank,
then the lower local position: the lower global index, exactly as `update.prune_and_grow`
breaks ties on the whole layer. Scores are compared in fp32. Communication per layer and
update: 2 all-gathers of ``k`` (value, index) pairs per rank; no rank sees the whole layer.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def shard_prune_and_grow(
    mask: torch.Tensor,
    drop_score: torch.Tensor,
    grow_score: torch.Tensor,
    num_swap: int,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of `update.prune_and_grow` over the whole layer: (new mask, grown
    positions), both bool and shaped like the local ``mask``. Every rank of ``group`` calls
    it with its own shard, in rank order of the layer's positions."""
    flat = mask.reshape(-1)
    grown = torch.zeros_like(flat)
    if num_swap == 0:
        return mask.clone(), grown.view_as(mask)
    drop_candidates = drop_score.reshape(-1).float().masked_fill(~flat, math.inf)
    new_mask = flat.clone()
    new_mask[shard_extreme(drop_candidates, num_swap, group, highest=False)] = False
    grow_candidates = grow_score.reshape(-1).float().masked_fill(new_mask, -math.inf)
    chosen = shard_extreme(grow_candidates, num_swap, group, highest=True)
    new_mask[chosen] = True
    grown[chosen] = True
    return new_mask.view_as(mask), grown.view_as(mask)


def shard_extreme(
    scores: torch.Tensor, count: int, group: dist.ProcessGroup, *, highest: bool
) -> torch.Tensor:
    """Local flat indices of this rank's share of the ``count`` lowest (or highest)
    ``scores`` over all ranks' shards, ties to the lower global index."""
    local = torch.sort(scores, descending=highest, stable=True)
    take = min(count, scores.numel())
    values = torch.full((count,), -math.inf if highest else math.inf, device=scores.device)
    indices = torch.full((count,), -1, dtype=torch.long, device=scores.device)
    values[:take] = local.values[:take]
    indices[:take] = local.indices[:take]
    world = dist.get_world_size(group)
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    dist.all_gather(all_values, values, group=group)
    dist.all_gather(all_indices, indices, group=group)
    # Rank-major and, within a rank, already in (score, index) order: a stable sort keeps
    # equal scores in global index order.
    order = torch.sort(torch.cat(all_values), descending=highest, stable=True).indices[:count]
    picked = torch.cat(all_indices)[order]
    if bool((picked < 0).any()):
        raise RuntimeError(f"a sharded selection of {count} found fewer candidates than that")
    mine = (order // count) == dist.get_rank(group)
    return picked[mine]
