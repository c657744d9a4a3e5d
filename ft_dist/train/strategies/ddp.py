"""torch DistributedDataParallel: the torch optimizer's state is the engine's to mask."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ft_dist.sparse import DynamicSparsity
from ft_dist.train.optim import build_optimizer, set_learning_rate_
from ft_dist.train.strategies.base import Strategy, StrategySetup


class DDPStrategy(Strategy):
    """torch DDP (gloo on CPU, nccl on CUDA); one process = plain module."""

    def __init__(self, module: nn.Module, setup: StrategySetup) -> None:
        device = setup.device  # DDP takes each micro-batch as it comes
        self.module = module
        self.grad_accum_steps = setup.train.grad_accum_steps
        self.autocast = setup.train.bf16 and device.type == "cuda"
        self.device, self.world_size = device, setup.world_size
        self.optimizer = build_optimizer(setup.optim, module)
        self.sparsity = DynamicSparsity(
            module,
            self.optimizer,
            setup.sparsity,
            global_batch_size=setup.global_batch_size,
            decay_period=setup.decay_period,
            input_shape=setup.input_shape,
        )
        self.rewrap({})

    def rewrap(self, vectors: dict) -> None:
        """DDP around the module as it is now (its parameters are new after a cut; the
        engine has moved the optimizer onto them)."""
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.model = self.module

    def set_lr(self, lr: float) -> None:
        set_learning_rate_(self.optimizer, lr)

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        sync = contextlib.nullcontext()
        if not last and isinstance(self.model, DistributedDataParallel):
            sync = self.model.no_sync()
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast)
        with sync, amp:
            yield

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        (loss / self.grad_accum_steps).backward()

    def optimizer_step(self) -> None:  # DDP has all-reduced .grad: the engine reads it
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_states(self) -> tuple[dict, dict]:
        # The sparsity engine last: loading it re-applies the masks to weights and state.
        return {
            **self.channel_cut_state(),
            "model": self.module,
            "optimizer": self.optimizer,
            "sparsity": self.sparsity,
        }, {}
