"""Masks under real data parallelism: 2 gloo processes, DDP, different data on each rank.

`run_workers` sets the env:// rendezvous variables and destroys the group afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ft_dist.sparse import DynamicSparsity, MaskMismatchError, SparsityConfig
from tests.gloo_workers import run_workers
from tests.sparse.helpers import make_optimizer, tiny_cnn, train_step

pytestmark = pytest.mark.dist
WORLD_SIZE = 2


def gather_masks(masks: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    gathered: list = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, {n: m.clone() for n, m in masks.items()})
    return gathered


def _masks_stay_identical(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo")
    model = DistributedDataParallel(tiny_cnn(seed=rank))  # DDP broadcasts rank 0's weights
    optimizer = make_optimizer(model, "sgd")
    initial = None
    for growth in ("gradient", "random"):
        config = SparsityConfig(density=0.3, growth=growth, update_every_steps=2, seed=11)
        sparsity = DynamicSparsity(model, optimizer, config)
        assert set(sparsity.masks) == {"0.weight", "3.weight", "7.weight"}  # no module.
        initial = initial or {n: m.clone() for n, m in sparsity.masks.items()}
        for step in range(8):
            train_step(model, optimizer, sparsity, step, rank=rank)  # different data per rank
            mine, other = gather_masks(sparsity.masks)
            for name in mine:
                assert torch.equal(mine[name], other[name]), f"{growth} step {step}: {name}"
        assert sparsity.num_updates == 4
    assert any(not torch.equal(initial[n], sparsity.masks[n]) for n in initial)
    # The parameters agree too: DDP averaged the gradients the growth read. (BatchNorm
    # running statistics are per-rank buffers and legitimately differ.)
    weights = [None] * WORLD_SIZE
    dist.all_gather_object(weights, dict(model.module.named_parameters()))
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def _corruption_is_detected(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo")
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, SparsityConfig(density=0.3, seed=1))
    if rank == 1:  # flip one position of one layer on one rank only
        mask = sparsity.masks["3.weight"].view(-1)
        mask[0] = ~mask[0]
    with pytest.raises(MaskMismatchError, match=r"3\.weight"):
        sparsity.check_consistency()


def test_masks_stay_identical_across_ranks_with_different_data():
    run_workers(_masks_stay_identical, WORLD_SIZE)


def test_a_corrupted_mask_on_one_rank_is_detected():
    run_workers(_corruption_is_detected, WORLD_SIZE)
