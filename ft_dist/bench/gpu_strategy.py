"""`ft-dist bench gpu` checks: the DDP, DeepSpeed ZeRO-2 and FSDP2 strategies keep DST's
invariants.

A one-rank process group (nccl on CUDA, gloo on CPU), the strategy built exactly as the
training loop builds it (`build_strategy`), a few steps with mask updates every 2 steps,
and after every step: inactive weights exactly 0 in the model, in DeepSpeed's fp32 masters
and in the optimizer state (momentum), and exactly the allotted active count per layer.
With one rank DDP does not wrap the model (nothing to all-reduce), so the check also runs
one nccl all_reduce to show the backend works on this GPU. FSDP2 on one rank shards over a
one-rank mesh (each shard is whole): the check covers its path on the GPU (DTensor
parameters and DST state, masking on the sharded ``.grad``, bf16 compute with fp32
reduction) and that the sharded parameters stay fp32; the sharding itself is tested on 2
gloo ranks (tests/train/strategies/test_fsdp2.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def one_rank_group(device) -> Iterator[str]:
    """torch.distributed with world size 1 (nccl on CUDA, gloo on CPU), torn down after."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=0, world_size=1, **kwargs)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def whole(tensor):
    """A DTensor (FSDP2) gathered to a full tensor; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_tensors(strategy, name: str) -> dict[str, Any]:
    """The weight, its fp32 master and its momentum buffer, assembled over ZeRO partitions
    or FSDP2 shards."""
    import torch

    param = strategy.sparsity.params[name]
    tensors = {"weight": whole(param.detach())}
    if hasattr(strategy, "engine"):  # DeepSpeed
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        master = safe_get_full_fp32_param(param)
        tensors["fp32 master"] = param.detach() if master is None else master
        state = safe_get_full_optimizer_state(param, "momentum_buffer")
        if state is None:
            state = strategy.base_optimizer.state.get(param, {}).get("momentum_buffer")
    else:
        state = strategy.optimizer.state.get(param, {}).get("momentum_buffer")
    if state is not None:
        tensors["momentum"] = whole(state)
    return {k: v.reshape(param.shape) if torch.is_tensor(v) else v for k, v in tensors.items()}


def invariant_violations(strategy) -> list[str]:
    """What breaks SPEC §4 in this rank's copy: nonzero inactive entries, wrong counts."""
    import torch

    sparsity, problems = strategy.sparsity, []
    for name in sparsity.sparse_names:
        mask = whole(sparsity.masks[name])
        if int(mask.sum()) != sparsity.num_active[name]:
            problems.append(
                f"{name}: {int(mask.sum())} active, expected {sparsity.num_active[name]}"
            )
        for kind, tensor in full_tensors(strategy, name).items():
            nonzero = int(torch.count_nonzero(tensor[~mask.to(tensor.device)]))
            if nonzero:
                problems.append(f"{name}: {nonzero} inactive {kind} entries are not 0")
    return problems


def train_and_check(strategy, device, sizes, num_classes: int = 10) -> dict[str, Any]:
    """A few steps (updates every 2), checking the invariants after each one."""
    import torch

    channels_last = device.type == "cuda"
    initial = {n: whole(m).clone() for n, m in strategy.sparsity.masks.items()}
    shape = (sizes.strategy_batch_size, sizes.in_channels, *[sizes.strategy_image_size] * 2)
    generator = torch.Generator().manual_seed(0)
    problems: list[str] = []
    for step in range(sizes.strategy_steps):
        images = torch.randn(shape, generator=generator).to(device, strategy.input_dtype)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, num_classes, (shape[0],), generator=generator).to(device)
        with strategy.micro_batch(True):
            loss = torch.nn.functional.cross_entropy(strategy.model(images).float(), labels)
            strategy.backward(loss, True)
        strategy.step()
        problems += [f"step {step + 1}: {p}" for p in invariant_violations(strategy)]
    changed = sum(
        int((initial[n] != whole(strategy.sparsity.masks[n])).sum()) for n in initial
    )  # fmt: skip
    return {
        "steps": sizes.strategy_steps,
        "mask_updates": strategy.sparsity.num_updates,
        "mask_positions_changed": changed,
        "loss": float(loss.detach()),
        "violations": problems[:20],
        "num_violations": len(problems),
    }


def build(device, sizes, kind: str):
    """The strategy as the training loop builds it: bf16 + channels_last on CUDA, SGD with
    momentum (a state to keep masked), gradient growth every 2 steps."""
    import torch

    from ft_dist.models import build_model
    from ft_dist.sparse import SparsityConfig
    from ft_dist.train.config import OptimConfig, TrainConfig
    from ft_dist.train.strategies import STRATEGIES
    from ft_dist.train.strategies.base import build_strategy

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    module = build_model(sizes.strategy_model, 10, sizes.in_channels, sizes.strategy_image_size)
    module = module.to(device)
    if cuda:
        module = module.to(memory_format=torch.channels_last)
    # each strategy at its entry's most demanding options (DeepSpeed: ZeRO-2)
    options = STRATEGIES[kind].example
    train = TrainConfig(strategy=kind, bf16=cuda, channels_last=cuda, **options)
    return build_strategy(
        module,
        train=train,
        optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9),
        sparsity=SparsityConfig(density=0.2, growth="gradient", update_every_steps=2),
        micro_batch_size=sizes.strategy_batch_size,
        device=device,
        world_size=1,
    )


def _check(device, sizes, kind: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    with one_rank_group(device) as backend:
        strategy = build(device, sizes, kind)
        result = train_and_check(strategy, device, sizes)
        probe = torch.ones(4, device=device)
        dist.all_reduce(probe)
        result["all_reduce_ok"] = bool((probe == 1).all())
        # the weights the optimizer updates (FSDP2: the shards; bf16 is for compute only)
        dtypes = {str(p.dtype) for p in strategy.module.parameters()}
        result["parameter_dtypes"] = sorted(dtypes)
    fp32_kept = kind != "fsdp2" or dtypes == {"torch.float32"}
    passed = (
        fp32_kept
        and result["num_violations"] == 0
        and result["mask_updates"] == sizes.strategy_steps // 2
        and result["mask_positions_changed"] > 0
        and result["all_reduce_ok"]
    )
    precision = "bf16" if device.type == "cuda" else "fp32"
    summary = (
        f"{backend}, {precision}, {result['steps']} steps, {result['mask_updates']} mask updates "
        f"({result['mask_positions_changed']} positions moved); violations "
        f"{result['num_violations']}"
    )
    if not fp32_kept:
        summary += f"; sharded parameters are {result['parameter_dtypes']}, not fp32"
    return {
        **result,
        "backend": backend,
        "precision": precision,
        "passed": passed,
        "summary": summary,
    }


def check_ddp(device, sizes, workdir: Path) -> dict[str, Any]:
    return _check(device, sizes, "ddp")


def check_deepspeed(device, sizes, workdir: Path) -> dict[str, Any]:
    return _check(device, sizes, "deepspeed")


def check_fsdp2(device, sizes, workdir: Path) -> dict[str, Any]:
    return _check(device, sizes, "fsdp2")
