"""DeepSpeed (ZeRO 0/1/2): gradients masked by autograd hooks before ZeRO shards them,
growth reading the full gradient through `deepspeed.utils.safe_get_full_grad`, resets
reaching the fp32 masters and optimizer partitions through DeepSpeed's public
`safe_{get,set}_full_{fp32_param,optimizer_state}`."""

from __future__ import annotations

import torch
from torch import nn

from ft_dist.private_api import zero_wrapped_optimizer
from ft_dist.sparse import DynamicSparsity
from ft_dist.train.optim import build_optimizer, set_learning_rate_
from ft_dist.train.optimizers import optimizer_entry
from ft_dist.train.strategies.base import Grads, Strategy, StrategySetup


class DeepSpeedStrategy(Strategy):
    """DeepSpeed engine with ZeRO stage 0, 1 or 2; bf16 weights on CUDA, fp32 on CPU."""

    def __init__(self, module: nn.Module, setup: StrategySetup) -> None:
        import deepspeed  # heavy; only DeepSpeed runs pay for it

        train = setup.train  # DeepSpeed reads the world size from the process group
        bf16 = train.bf16 and setup.device.type == "cuda"
        # Masks first, so that the fp32 masters DeepSpeed clones from the weights start masked.
        self.sparsity = DynamicSparsity(
            module,
            None,
            setup.sparsity,
            global_batch_size=setup.global_batch_size,
            decay_period=setup.decay_period,
        )
        # Zero inactive gradients as autograd produces them, before ZeRO reduces and shards
        # them: the partitioned optimizer then never moves an inactive master.
        self._hooks = self.sparsity.register_gradient_masking()
        self.state_keys = optimizer_entry(setup.optim.name).state_keys(setup.optim)
        config = {
            "train_micro_batch_size_per_gpu": setup.micro_batch_size,
            "gradient_accumulation_steps": train.grad_accum_steps,
            "zero_optimization": {"stage": train.zero_stage},
            "bf16": {"enabled": bf16},
            "zero_allow_untested_optimizer": True,  # plain torch SGD/AdamW
            "gradient_clipping": 0.0,
            "steps_per_print": 2**62,
        }
        optimizer = build_optimizer(setup.optim, module)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        self.model = self.engine
        self.module = self.engine.module
        self.input_dtype = torch.bfloat16 if bf16 else torch.float32

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer whose parameters are the (partitioned) fp32 masters."""
        return zero_wrapped_optimizer(self.engine.optimizer)

    def set_lr(self, lr: float) -> None:
        set_learning_rate_(self.engine.optimizer, lr)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss)  # scales by 1/grad_accum_steps itself
        if not last:
            self.engine.step()  # only advances DeepSpeed's micro-step counter

    def full_gradients(self) -> Grads:
        """The all-reduced gradient of every sparse layer, reassembled from the ZeRO partitions
        (valid after the last backward of a step and before `engine.step()`)."""
        from deepspeed.utils import safe_get_full_grad

        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed step() called off a gradient-accumulation boundary")
        grads = {}
        for name in self.sparsity.sparse_names:
            grad = safe_get_full_grad(self.sparsity.params[name])
            if grad is None:
                raise RuntimeError(f"DeepSpeed holds no gradient for {name}")
            grads[name] = grad.detach().float().clone()
        return grads

    def optimizer_step(self) -> None:
        self.engine.step()

    @torch.no_grad()
    def apply_resets(self, resets: dict[str, torch.Tensor]) -> None:
        """Zero ``resets`` in the fp32 masters and the optimizer state, through DeepSpeed's
        public accessors (each get is an all-reduce: every rank calls this in the same
        order). ZeRO-0 in fp32 keeps no masters: the weight is its own master, and the
        torch optimizer's state is reached directly."""
        from deepspeed.utils import (
            safe_get_full_fp32_param,
            safe_get_full_optimizer_state,
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
        )

        for name, positions in resets.items():
            param = self.sparsity.parameter(name)  # or a removed channel's norm/bias
            master = safe_get_full_fp32_param(param)
            if master is None:  # ZeRO-0 fp32: weights already zeroed by the engine
                state = self.engine.optimizer.state.get(param, {})
                for value in state.values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.masked_fill_(positions, 0.0)
                continue
            safe_set_full_fp32_param(param, master.masked_fill_(positions, 0.0))
            for key in self.state_keys:
                try:
                    value = safe_get_full_optimizer_state(param, key)
                except ValueError:  # no optimizer step yet: no state to zero
                    continue
                safe_set_full_optimizer_state(param, value.masked_fill_(positions, 0.0), key)

    def checkpoint_states(self) -> tuple[dict, dict]:
        return {"model": self.module, "sparsity": self.sparsity}, {"zero": _ZeroPartition(self)}


class _ZeroPartition:
    """This rank's fp32 masters and optimizer state. DeepSpeed's own ``state_dict()`` holds
    Python objects (its loss scaler) that a ``weights_only`` load refuses, so the plain
    tensors are taken from the torch optimizer it wraps."""

    def __init__(self, strategy: DeepSpeedStrategy) -> None:
        self.strategy = strategy

    def _masters(self) -> list[torch.Tensor]:
        return [p for g in self.strategy.base_optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        masters = [p.detach().clone() for p in self._masters()]
        return {"masters": masters, "optimizer": self.strategy.base_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        masters = self._masters()
        if len(masters) != len(state["masters"]):
            raise ValueError("DeepSpeed checkpoint has a different parameter-group layout")
        with torch.no_grad():
            for master, saved in zip(masters, state["masters"], strict=True):
                master.copy_(saved)
        self.strategy.base_optimizer.load_state_dict(state["optimizer"])
