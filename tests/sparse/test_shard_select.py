"""The sharded prune-and-grow choice equals `update.prune_and_grow` on the whole layer,
ties included, on uneven shards (one of them empty), with real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from ft_dist.sparse.shard_select import shard_prune_and_grow
from ft_dist.sparse.update import prune_and_grow, random_mask
from tests.gloo_workers import run_workers

# (rows, columns): 7 rows on 3 ranks split 3/3/1; 2 rows leave the third rank empty.
SHAPES = ((7, 5), (2, 9), (13,), (40, 3))


def _worker(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    generator = torch.Generator().manual_seed(0)  # the same draws on every rank
    for trial in range(8):
        for shape in SHAPES:
            numel = torch.Size(shape).numel()
            mask = random_mask(torch.Size(shape), max(1, numel // 3), generator)
            # Few distinct values: ties everywhere, broken by index.
            drop = torch.randint(0, 3, shape, generator=generator).float()
            grow = torch.randint(0, 3, shape, generator=generator).float()
            num_swap = int(torch.randint(0, int(mask.sum()) + 1, (1,), generator=generator))
            expected = prune_and_grow(mask, drop, grow, num_swap)
            expected_grown = torch.zeros(numel, dtype=torch.bool)
            expected_grown[expected.grown] = True

            def local(t: torch.Tensor) -> torch.Tensor:
                return distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None).to_local()

            new, grown = shard_prune_and_grow(
                local(mask), local(drop), local(grow), num_swap, mesh.get_group()
            )
            gathered = [None] * world_size
            dist.all_gather_object(gathered, (new, grown))
            whole = torch.cat([g[0].reshape(-1) for g in gathered])
            whole_grown = torch.cat([g[1].reshape(-1) for g in gathered])
            assert torch.equal(whole, expected.mask.reshape(-1)), (trial, shape, num_swap)
            assert torch.equal(whole_grown, expected_grown), (trial, shape, num_swap)
            assert int(whole.sum()) == int(mask.sum())


@pytest.mark.dist
def test_sharded_choice_equals_the_whole_layer_choice_on_three_ranks() -> None:
    run_workers(_worker, 3)
