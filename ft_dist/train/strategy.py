"""DDP and DeepSpeed behind one small interface, each keeping DST's invariants (SPEC §4, §9).

The loop only ever does::

    strategy.begin_step(capture_grads)        # keep this step's dense gradient for exploration?
    with strategy.micro_batch(last):          # no gradient sync until the last micro-batch
        loss = criterion(strategy.model(x), y)
        strategy.backward(loss, last)
    strategy.step()                           # optimizer step + masks + scheduled prune/grow

Every strategy steps the same way (`Strategy.step`): the DST engine's two hooks around the
strategy's own optimizer step. A strategy only says how to read the full gradients, how to
take its optimizer step, and how to zero positions in the weight copies it keeps
(`apply_resets`). DDP: the torch optimizer's state is the engine's to mask, nothing more to
do. DeepSpeed (ZeRO 0/1/2): gradients are masked by autograd hooks before ZeRO shards them,
growth reads the full gradient through `deepspeed.utils.safe_get_full_grad`, and resets
reach the fp32 masters and optimizer partitions through DeepSpeed's public
`safe_{get,set}_full_{fp32_param,optimizer_state}`. A new strategy (FSDP) is one such class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ft_dist.private_api import zero_wrapped_optimizer
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.scores import GROWTH_SCORES, drop_criterion, growth_criterion
from ft_dist.train.config import OptimConfig, TrainConfig
from ft_dist.train.optim import build_optimizer, set_learning_rate_
from ft_dist.utils import table_entry

Grads = dict[str, torch.Tensor]


class Strategy:
    """What the loop needs; subclasses fill in their optimizer step and state."""

    model: nn.Module  # call this for the forward pass (possibly wrapped)
    module: nn.Module  # the bare model: parameter names without wrapper prefixes
    sparsity: DynamicSparsity
    input_dtype: torch.dtype = torch.float32
    _capture: bool = False  # this step's dense gradient is kept for an exploration
    _captured_grads: Grads | None = None

    # ---------------------------------------------------------------- the one DST hook point
    def begin_step(self, capture_grads: bool = False) -> None:
        """Before the step's first backward: ``capture_grads`` keeps its dense gradient for
        a following `explore(..., growth="gradient")` (EDST global exploration)."""
        self._capture = capture_grads
        self.sparsity.keep_dense_gradients(capture_grads)

    def step(self) -> None:
        """One optimizer step with DST around it, identical for every strategy."""
        sparsity = self.sparsity
        grads = self.full_gradients() if sparsity.wants_dense_gradients() else None
        if self._capture:
            source = grads if grads is not None else sparsity.current_gradients()
            self._captured_grads = {n: g.detach().clone() for n, g in source.items()}
            self._capture = False
        sparsity.before_optimizer_step(grads)
        self.optimizer_step()
        self.apply_resets(sparsity.after_optimizer_step())

    def explore(self, drop_fraction: float, growth: str) -> None:
        """One out-of-schedule DST update (EDST), gradient growth reading the gradient
        captured at the last step."""
        grads = self._captured_grads
        if growth_criterion(growth).needs_gradient and not grads:
            raise RuntimeError("gradient exploration needs begin_step(capture_grads=True) first")
        self.apply_resets(self.sparsity.explore(drop_fraction, growth, grads=grads))
        self._captured_grads = None

    # ---------------------------------------------------------------- per strategy
    def full_gradients(self) -> Grads | None:
        """The dense, all-reduced gradients of the sparse layers (None: read ``.grad``)."""
        return None

    def optimizer_step(self) -> None:
        raise NotImplementedError

    def apply_resets(self, resets: dict[str, torch.Tensor]) -> None:
        """Zero these positions in any weight copies or optimizer state the engine cannot
        see (the engine has zeroed the model weights and a torch optimizer's state)."""

    def set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        raise NotImplementedError

    def checkpoint_states(self) -> tuple[dict, dict]:
        """(stateful objects replicated on all ranks, this rank's own), in restore order."""
        raise NotImplementedError


def build_strategy(
    module: nn.Module,
    *,
    train: TrainConfig,
    optim: OptimConfig,
    sparsity: SparsityConfig,
    micro_batch_size: int,
    device: torch.device,
    world_size: int,
    decay_period=None,
) -> Strategy:
    """Wrap ``module`` (already on ``device``) for data parallelism and attach DST to it.
    ``decay_period``: step -> (start, length) of the drop-fraction cosine (a run plan's)."""
    entry = strategy_entry(train.strategy)
    check_strategy_supports(train.strategy, sparsity)
    return entry.cls(
        module,
        train=train,
        optim=optim,
        sparsity=sparsity,
        micro_batch_size=micro_batch_size,
        device=device,
        world_size=world_size,
        global_batch_size=micro_batch_size * train.grad_accum_steps * world_size,
        decay_period=decay_period,
    )


# --------------------------------------------------------------------------- DDP
class DDPStrategy(Strategy):
    """torch DDP (gloo on CPU, nccl on CUDA); one process = plain module."""

    def __init__(
        self,
        module: nn.Module,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        sparsity: SparsityConfig,
        micro_batch_size: int,
        device: torch.device,
        world_size: int,
        global_batch_size: int,
        decay_period=None,
    ) -> None:
        del micro_batch_size  # DDP takes each batch as it comes
        self.module = module
        self.grad_accum_steps = train.grad_accum_steps
        self.autocast = train.bf16 and device.type == "cuda"
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=ids)
        else:
            self.model = module
        self.optimizer = build_optimizer(optim, module)
        self.sparsity = DynamicSparsity(
            module,
            self.optimizer,
            sparsity,
            global_batch_size=global_batch_size,
            decay_period=decay_period,
        )

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
        return {"model": self.module, "optimizer": self.optimizer, "sparsity": self.sparsity}, {}


# --------------------------------------------------------------------------- DeepSpeed
class DeepSpeedStrategy(Strategy):
    """DeepSpeed engine with ZeRO stage 0, 1 or 2; bf16 weights on CUDA, fp32 on CPU."""

    def __init__(
        self,
        module: nn.Module,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        sparsity: SparsityConfig,
        micro_batch_size: int,
        device: torch.device,
        world_size: int,
        global_batch_size: int,
        decay_period=None,
    ) -> None:
        import deepspeed  # heavy; only DeepSpeed runs pay for it

        del world_size  # DeepSpeed reads it from the process group
        bf16 = train.bf16 and device.type == "cuda"
        # Masks first, so that the fp32 masters DeepSpeed clones from the weights start masked.
        self.sparsity = DynamicSparsity(
            module,
            None,
            sparsity,
            global_batch_size=global_batch_size,
            decay_period=decay_period,
        )
        # Zero inactive gradients as autograd produces them, before ZeRO reduces and shards
        # them: the partitioned optimizer then never moves an inactive master.
        self._hooks = self.sparsity.register_gradient_masking()
        self.state_keys = _optimizer_state_keys(optim)
        config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": train.grad_accum_steps,
            "zero_optimization": {"stage": train.zero_stage},
            "bf16": {"enabled": bf16},
            "zero_allow_untested_optimizer": True,  # plain torch SGD/AdamW
            "gradient_clipping": 0.0,
            "steps_per_print": 2**62,
        }
        optimizer = build_optimizer(optim, module)
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


def _optimizer_state_keys(optim: OptimConfig) -> tuple[str, ...]:
    """The per-weight state tensors of the torch optimizer `build_optimizer` makes."""
    if optim.name == "adamw":
        return ("exp_avg", "exp_avg_sq")
    return ("momentum_buffer",) if optim.momentum > 0 else ()


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class StrategyEntry:
    """A strategy and what it can do; config validation and --help read these fields."""

    cls: type[Strategy]
    summary: str
    # Can the dense gradient be read at every step (EMA growth criteria, the official CIFAR
    # inactive_momentum=keep)? Not under ZeRO: reassembling the full gradient from its
    # partitions at every step would defeat ZeRO's memory savings.
    every_step_dense_gradient: bool
    zero_stages: bool  # train.zero_stage applies
    fp32_masters: bool  # keeps its own fp32 copy of the weights (checkpoint size)


STRATEGIES: dict[str, StrategyEntry] = {
    "ddp": StrategyEntry(
        DDPStrategy,
        "torch DistributedDataParallel (gloo on CPU, nccl on GPU)",
        every_step_dense_gradient=True,
        zero_stages=False,
        fp32_masters=False,
    ),
    "deepspeed": StrategyEntry(
        DeepSpeedStrategy,
        "DeepSpeed engine, ZeRO stage 0/1/2, bf16 weights on GPU",
        every_step_dense_gradient=False,
        zero_stages=True,
        fp32_masters=True,
    ),
}


def strategy_entry(name: str) -> StrategyEntry:
    return table_entry(STRATEGIES, name, "train.strategy")


def check_strategy_supports(name: str, sparsity: SparsityConfig) -> None:
    """Refuse a sparsity setting the strategy cannot run, naming what to change."""
    if strategy_entry(name).every_step_dense_gradient or not sparsity.is_dynamic:
        return
    culprits = [
        f"sparsity.{key}={value}"
        for key, value, criterion in (
            ("growth", sparsity.growth, growth_criterion(sparsity.growth)),
            ("drop", sparsity.drop, drop_criterion(sparsity.drop)),
        )
        if criterion.needs_every_step_gradient
    ]
    if sparsity.inactive_momentum == "keep":
        culprits.append("sparsity.inactive_momentum=keep")
    if culprits:
        fine = [n for n, c in GROWTH_SCORES.items() if not c.needs_every_step_gradient]
        raise ValueError(
            f"{' and '.join(culprits)} reads the full gradient at every step, which "
            f"train.strategy={name} does not provide: use sparsity.growth "
            f"{' or '.join(fine)} with inactive_momentum=zero (or train.strategy=ddp)"
        )
