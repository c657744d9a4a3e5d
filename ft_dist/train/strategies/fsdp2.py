"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state
sharded on dim 0 across ranks, and the DST engine's state sharded alike (sparse/sharded.py).

Gradient masking: after backward FSDP2 leaves the reduce-scattered, dense gradient shard on
each parameter's ``.grad`` (a DTensor), and the engine masks it there before the optimizer
step (`Strategy.before_optimizer_step`), exactly as under DDP. Tensor hooks are not used:
`param.register_hook` does not fire for FSDP2's sharded parameters. Because ``.grad`` is
dense at every step, every growth and drop criterion (EMA ones included) is served.

Precision: on CUDA with ``train.bf16`` the all-gathered parameters compute in bf16 and
gradients are reduced in fp32 (`MixedPrecisionPolicy`); the sharded parameters, optimizer
state and every DST score stay fp32. On the CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ft_dist.sparse.sharded import ShardedDynamicSparsity
from ft_dist.train.optim import build_optimizer, set_learning_rate_
from ft_dist.train.strategies.base import Strategy, StrategySetup
from ft_dist.train.validate import sync_buffers_


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The submodules sharded as their own unit (all-gathered just before they run), children
    before their parents (`fully_shard` takes every parameter of its subtree that no inner
    unit took): every one holding parameters of its own, except the root, which takes the
    rest, and except a child of a module that holds parameters itself: such a parent may
    read the child's weights without calling it (`nn.MultiheadAttention` reads its
    ``out_proj``), so the parent's unit takes them."""
    parents = {child: parent for parent in module.modules() for child in parent.children()}

    def holds_parameters(sub: nn.Module) -> bool:
        return any(True for _ in sub.parameters(recurse=False))

    units = [
        sub
        for sub in module.modules()
        if sub is not module and holds_parameters(sub) and not holds_parameters(parents[sub])
    ]
    return units[::-1]  # modules() lists parents first


class FSDP2Strategy(Strategy):
    """torch FSDP2 over all ranks (gloo on CPU, nccl on CUDA); DST state sharded alike."""

    collective_forward = True  # every forward all-gathers: evaluation runs equal counts

    def __init__(self, module: nn.Module, setup: StrategySetup) -> None:
        device = setup.device
        self.grad_accum_steps = setup.train.grad_accum_steps
        if not dist.is_initialized():  # one process: FSDP2 still needs a (trivial) group
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.mesh = init_device_mesh(device.type, (setup.world_size,))
        bf16 = setup.train.bf16 and device.type == "cuda"
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else MixedPrecisionPolicy()
        )
        # FSDP2 shards contiguous parameters only (rows of dim 0): channels_last weights
        # (train.channels_last) go back to the default layout; the inputs may stay
        # channels_last.
        module.to(memory_format=torch.contiguous_format)
        for unit in shard_units(module):
            fully_shard(unit, mesh=self.mesh, mp_policy=policy)
        fully_shard(module, mesh=self.mesh, mp_policy=policy)
        self.module = self.model = module
        # Built on the sharded parameters: its state is sharded with them.
        self.optimizer = build_optimizer(setup.optim, module)
        self.sparsity = ShardedDynamicSparsity(
            module,
            self.optimizer,
            setup.sparsity,
            global_batch_size=setup.global_batch_size,
            decay_period=setup.decay_period,
            input_shape=setup.input_shape,
        )

    def rewrap(self, vectors: dict) -> None:
        raise ValueError("train.strategy=fsdp2 cannot cut channels (sparsity.channel_sparsity) yet")

    def begin_step(self, capture_grads: bool = False) -> None:
        # Buffers (BatchNorm statistics) are not sharded and drift per rank: rank 0's go
        # to all before each step, as DDP's broadcast_buffers does, so that a checkpoint
        # (which keeps one copy) resumes every rank exactly.
        sync_buffers_(self.module)
        super().begin_step(capture_grads)

    def set_lr(self, lr: float) -> None:
        set_learning_rate_(self.optimizer, lr)

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        # Reduce-scatter only after the last micro-batch; earlier ones accumulate unsharded.
        self.model.set_requires_gradient_sync(last)
        yield

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        (loss / self.grad_accum_steps).backward()

    def optimizer_step(self) -> None:  # .grad holds the masked gradient shards
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_states(self) -> tuple[dict, dict]:
        return {}, {}  # everything is sharded: `sharded_states`

    def sharded_states(self) -> dict:
        return {"sharded": ShardedTrainingState(self)}


class ShardedTrainingState:
    """Model, optimizer and DST engine of an FSDP2 run as DTensors, for
    torch.distributed.checkpoint: each rank writes its own shards and a load reshards them
    to the loading world size. The optimizer state is keyed by parameter name
    (`get_state_dict`), so it maps onto the parameters whatever their sharding."""

    def __init__(self, strategy: FSDP2Strategy) -> None:
        self.strategy = strategy

    def state_dict(self) -> dict:
        strategy = self.strategy
        # Buffers are saved once (from any rank): make them rank 0's on every rank, as the
        # next step's `begin_step` would anyway.
        sync_buffers_(strategy.module)
        model, optimizer = get_state_dict(strategy.module, strategy.optimizer)
        return {"model": model, "optimizer": optimizer, "sparsity": strategy.sparsity.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        strategy = self.strategy
        set_state_dict(
            strategy.module,
            strategy.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        # Last: it re-applies the masks to the loaded weights and optimizer state.
        strategy.sparsity.load_state_dict(state["sparsity"])
