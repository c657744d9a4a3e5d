"""DeepSpeed (ZeRO 0/1/2): gradients masked by autograd hooks before ZeRO shards them,
growth reading the full gradient through `deepspeed.utils.safe_get_full_grad`, resets
reaching the fp32 masters and optimizer partitions through DeepSpeed's public
`safe_{get,set}_full_{fp32_param,optimizer_state}`."""

from __future__ import annotations

import torch
from torch import nn

from ft_dist.private_api import link_zero_optimizer_state, zero_wrapped_optimizer
from ft_dist.sparse import DynamicSparsity
from ft_dist.sparse.slim import slim_tensor
from ft_dist.train.optim import build_optimizer, set_learning_rate_
from ft_dist.train.optimizers import optimizer_entry
from ft_dist.train.strategies.base import Grads, Strategy, StrategySetup


class DeepSpeedStrategy(Strategy):
    """DeepSpeed engine with ZeRO stage 0, 1 or 2; bf16 weights on CUDA, fp32 on CPU."""

    _hooks: list = []  # the engine's gradient-masking hooks on the current parameters
    _carried: tuple[dict, dict] | None = None  # optimizer state across a cut (`shrunk`)

    def __init__(self, module: nn.Module, setup: StrategySetup) -> None:
        train = setup.train  # DeepSpeed reads the world size from the process group
        bf16 = train.bf16 and setup.device.type == "cuda"
        # Masks first, so that the fp32 masters DeepSpeed clones from the weights start masked.
        self.sparsity = DynamicSparsity(
            module,
            None,
            setup.sparsity,
            global_batch_size=setup.global_batch_size,
            decay_period=setup.decay_period,
            input_shape=setup.input_shape,
        )
        self.state_keys = optimizer_entry(setup.optim.name).state_keys(setup.optim)
        self.optim_config = setup.optim
        self.config = {
            "train_micro_batch_size_per_gpu": setup.micro_batch_size,
            "gradient_accumulation_steps": train.grad_accum_steps,
            "zero_optimization": {"stage": train.zero_stage},
            "bf16": {"enabled": bf16},
            "zero_allow_untested_optimizer": True,  # plain torch SGD/AdamW
            "gradient_clipping": 0.0,
            "steps_per_print": 2**62,
        }
        self.module = module
        self.rewrap({})
        self.input_dtype = torch.bfloat16 if bf16 else torch.float32

    def rewrap(self, vectors: dict) -> None:
        """A DeepSpeed engine (and its ZeRO partitions) around the module as it is now; its
        optimizer state starts empty (`shrunk` carries the old state over)."""
        import deepspeed  # heavy; only DeepSpeed runs pay for it

        # Zero inactive gradients as autograd produces them, before ZeRO reduces and shards
        # them: the partitioned optimizer then never moves an inactive master.
        for handle in self._hooks:
            handle.remove()
        self._hooks = self.sparsity.register_gradient_masking()
        optimizer = build_optimizer(self.optim_config, self.module)
        self.engine, *_ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, config=self.config
        )
        self.model = self.engine
        self.module = self.engine.module
        carried, self._carried = self._carried, None
        if carried:
            states, scalars = carried
            new = self.sparsity.channels.named
            cut = {
                new[n]: {k: slim_tensor(v, vectors.get(n, {})) for k, v in state.items()}
                for n, state in states.items()
            }
            self._set_full_optimizer_states(cut, scalars)

    def shrunk(self) -> DeepSpeedStrategy:
        """The removed channels cut out: the optimizer state of every parameter is read in
        full first (DeepSpeed's public accessors), and `rewrap` writes it back cut into the
        engine and partitions it rebuilds around the slim module."""
        self._carried = self._full_optimizer_states(dict(self.sparsity.channels.named))
        return super().shrunk()

    @torch.no_grad()
    def _full_optimizer_states(self, params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """(parameter name -> {state key: full tensor}, the state's scalars such as Adam's
        step) of every parameter; empty before the first optimizer step."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        full: dict[str, dict[str, torch.Tensor]] = {}
        for name, param in params.items():
            if safe_get_full_fp32_param(param) is None:  # ZeRO-0 fp32: the torch optimizer's
                state = self.engine.optimizer.state.get(param, {})
                full[name] = {k: v.clone() for k, v in state.items() if k in self.state_keys}
                continue
            for key in self.state_keys:
                try:
                    full.setdefault(name, {})[key] = safe_get_full_optimizer_state(param, key)
                except ValueError:  # no optimizer step yet: no state
                    continue
        scalars = {}
        for state in self.base_optimizer.state.values():
            scalars = {k: v for k, v in state.items() if k not in self.state_keys}
            break
        return {n: s for n, s in full.items() if s}, scalars

    @torch.no_grad()
    def _set_full_optimizer_states(self, states: dict, scalars: dict) -> None:
        """Write full per-parameter states into the new engine's (empty) optimizer state."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_optimizer_state

        if not states:
            return
        optimizer = self.base_optimizer
        partitioned = any(safe_get_full_fp32_param(p) is not None for p in states)
        if not partitioned:  # ZeRO-0 fp32: the torch optimizer holds the parameters
            for param, state in states.items():
                optimizer.state[param] = {**_clone(scalars), **state}
            return
        for group in optimizer.param_groups:  # torch state, as its first step creates it
            for flat in group["params"]:
                zeros = {key: torch.zeros_like(flat) for key in self.state_keys}
                optimizer.state[flat] = {**_clone(scalars), **zeros}
        link_zero_optimizer_state(self.engine.optimizer)
        for param, state in states.items():
            for key, value in state.items():
                safe_set_full_optimizer_state(param, value, key)

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
        replicated = {**self.channel_cut_state(), "model": self.module, "sparsity": self.sparsity}
        return replicated, {"zero": _ZeroPartition(self)}


def _clone(values: dict) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in values.items()}


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
