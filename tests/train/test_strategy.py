"""DDP and DeepSpeed ZeRO-1/2 keep DST's invariants across 2 real gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ft_dist.sparse import SparsityConfig
from ft_dist.train.config import OptimConfig, TrainConfig
from ft_dist.train.strategies.base import build_strategy
from tests.gloo_workers import run_workers

NUM_STEPS = 6
SPARSITY = SparsityConfig(
    density=0.3, sparse_init="uniform", growth="gradient", update_every_steps=2, drop_fraction=0.5
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different data on every rank, so only the all-reduced gradient keeps masks equal."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 1, 6, 6, generator=generator), torch.randint(
        0, 4, (8,), generator=generator
    )


def train_steps(train: TrainConfig, optim: OptimConfig, check=None):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    strategy = build_strategy(
        tiny_model(),
        train=train,
        optim=optim,
        sparsity=SPARSITY,
        micro_batch_size=8 // train.grad_accum_steps,
        device=torch.device("cpu"),
        world_size=world_size,
    )
    initial = {n: m.clone() for n, m in strategy.sparsity.masks.items()}
    accum = train.grad_accum_steps
    for step in range(NUM_STEPS):
        images, labels = rank_batch(rank, step)
        for index, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum), strict=True)):
            last = index == accum - 1
            with strategy.micro_batch(last):
                loss = nn.functional.cross_entropy(strategy.model(x), y)
                strategy.backward(loss, last)
        strategy.step()
        if check is not None:
            check(strategy)
    assert strategy.sparsity.num_updates == NUM_STEPS // 2
    assert any(not torch.equal(initial[n], m) for n, m in strategy.sparsity.masks.items())
    weights = {n: p.detach().clone() for n, p in strategy.module.state_dict().items()}
    return weights, {n: m.clone() for n, m in strategy.sparsity.masks.items()}


def check_deepspeed_invariants(strategy) -> None:
    """Inactive weights are 0 in the model, in the full fp32 masters and in the full optimizer
    state (assembled from every rank's ZeRO partition); masks are identical on all ranks."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    sparsity = strategy.sparsity
    keys = (
        ("exp_avg", "exp_avg_sq")
        if isinstance(strategy.base_optimizer, torch.optim.AdamW)
        else ("momentum_buffer",)
    )
    for name in sparsity.sparse_names:
        param, inactive = sparsity.params[name], ~sparsity.masks[name]
        assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]
        assert torch.count_nonzero(param.detach()[inactive]) == 0, name
        master = safe_get_full_fp32_param(param)  # None: ZeRO-0 fp32, the weight is the master
        master = param.detach() if master is None else master
        assert torch.count_nonzero(master[inactive]) == 0, f"fp32 master of {name}"
        assert torch.count_nonzero(master[~inactive]) > 0
        for key in keys:
            state = safe_get_full_optimizer_state(param, key)
            if state is None:
                state = strategy.base_optimizer.state[param][key]
            assert torch.count_nonzero(state[inactive]) == 0, f"{key} of {name}"
    flat = torch.cat([m.reshape(-1) for m in sparsity.masks.values()]).to(torch.uint8)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered)


def _deepspeed_worker(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    cases = (
        (0, 1, OptimConfig(name="sgd-nesterov", lr=0.1)),
        (1, 1, OptimConfig(name="adamw", lr=1e-2)),
        (2, 2, OptimConfig(lr=0.1)),
    )
    for stage, accum, optim in cases:
        ddp_weights, ddp_masks = train_steps(TrainConfig(), optim)
        # ZeRO-2 accumulates 2 half-batches: the same step as DDP's full batch.
        ds_train = TrainConfig(strategy="deepspeed", zero_stage=stage, grad_accum_steps=accum)
        ds_weights, ds_masks = train_steps(ds_train, optim, check=check_deepspeed_invariants)
        # Growth read the same (full, averaged) gradient as DDP: same masks, same weights.
        for name, mask in ddp_masks.items():
            assert torch.equal(mask, ds_masks[name]), (
                f"ZeRO-{stage}: mask of {name} differs from DDP"
            )
        for name, weight in ddp_weights.items():
            torch.testing.assert_close(ds_weights[name], weight, rtol=1e-4, atol=1e-5)
    if dist.get_rank() == 0:
        print("deepspeed == ddp: ZeRO-0 nesterov, ZeRO-1 adamw, ZeRO-2 sgd + grad accumulation")


@pytest.mark.dist
@pytest.mark.slow
def test_deepspeed_zero0_1_2_keep_masks_on_masters_and_partitions() -> None:
    run_workers(_deepspeed_worker, 2)


def _ddp_worker(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)

    def check(strategy) -> None:
        for name in strategy.sparsity.sparse_names:
            inactive = ~strategy.sparsity.masks[name]
            assert torch.count_nonzero(strategy.sparsity.params[name].detach()[inactive]) == 0
            momentum = strategy.optimizer.state[strategy.sparsity.params[name]]["momentum_buffer"]
            assert torch.count_nonzero(momentum[inactive]) == 0

    weights, masks = train_steps(TrainConfig(), OptimConfig(lr=0.1), check=check)
    # Two accumulated half-batches (no_sync on the first) make the same steps.
    accumulated, accumulated_masks = train_steps(
        TrainConfig(grad_accum_steps=2), OptimConfig(lr=0.1)
    )
    assert all(torch.equal(masks[n], accumulated_masks[n]) for n in masks)
    for name, weight in weights.items():
        torch.testing.assert_close(accumulated[name], weight, rtol=1e-4, atol=1e-5)


@pytest.mark.dist
def test_ddp_two_ranks_different_data_keep_identical_masks() -> None:
    # DynamicSparsity's checksum after every update raises if the ranks' masks drift apart.
    run_workers(_ddp_worker, 2)
