"""DDP and DeepSpeed behind one small interface, each keeping DST's invariants (SPEC §4, §9).

The loop only ever does::

    with strategy.micro_batch(last):          # no gradient sync until the last micro-batch
        loss = criterion(strategy.model(x), y)
        strategy.backward(loss, last)
    strategy.step()                           # optimizer step + masks + scheduled prune/grow

DDP: `DynamicSparsity` owns the torch optimizer and does everything (DDP has averaged the
gradient before `step()`).

DeepSpeed (ZeRO 0/1/2): DeepSpeed owns the optimizer step, on fp32 *master* copies that it
may partition across ranks, so `DynamicSparsity` runs without an optimizer and this module
keeps the masters and the optimizer state of this rank's partition masked itself. The
gradient that growth reads is reassembled from the partitions (all-reduced) only on the
steps that need it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.train.config import OptimConfig, TrainConfig
from ft_dist.train.optim import build_optimizer, set_learning_rate_


class Strategy:
    """What the loop needs; subclasses fill in how the step and the state are done."""

    model: nn.Module  # call this for the forward pass (possibly wrapped)
    module: nn.Module  # the bare model: parameter names without wrapper prefixes
    sparsity: DynamicSparsity
    input_dtype: torch.dtype = torch.float32
    _captured_grads: dict[str, torch.Tensor]

    def set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        raise NotImplementedError

    def step(self, capture_grads: bool = False) -> None:
        """One optimizer step. ``capture_grads`` keeps this step's dense gradient for a
        following `explore(..., growth="gradient")` (EDST global exploration)."""
        raise NotImplementedError

    def explore(self, drop_fraction: float, growth: str) -> None:
        """One out-of-schedule DST update (EDST), with gradient growth reading the dense
        gradient captured at the last step."""
        if growth != "gradient":
            self.sparsity.explore(drop_fraction, growth)
            return
        if not self._captured_grads:
            raise RuntimeError("gradient exploration needs step(capture_grads=True) just before")
        with _grads_set(self.sparsity, self._captured_grads):
            self.sparsity.explore(drop_fraction, growth)
        self._captured_grads = {}

    def state_dict(self) -> tuple[dict, dict]:
        """(state replicated on all ranks: saved by rank 0, this rank's own state)."""
        raise NotImplementedError

    def load_state_dict(self, shared: dict, local: dict | None) -> None:
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
) -> Strategy:
    """Wrap ``module`` (already on ``device``) for data parallelism and attach DST to it."""
    global_batch_size = micro_batch_size * train.grad_accum_steps * world_size
    if train.strategy == "deepspeed":
        return DeepSpeedStrategy(
            module, train, optim, sparsity, micro_batch_size, device, global_batch_size
        )
    return DDPStrategy(module, train, optim, sparsity, device, world_size, global_batch_size)


@contextlib.contextmanager
def _grads_set(sparsity: DynamicSparsity, grads: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give the sparse layers the given gradients (growth scores read ``.grad``)."""
    saved = {name: sparsity.params[name].grad for name in grads}
    for name, grad in grads.items():
        param = sparsity.params[name]
        param.grad = grad.to(param.dtype)
    try:
        yield
    finally:
        for name, grad in saved.items():
            sparsity.params[name].grad = grad


# --------------------------------------------------------------------------- DDP
class DDPStrategy(Strategy):
    """torch DDP (gloo on CPU, nccl on CUDA); one process = plain module."""

    def __init__(
        self,
        module: nn.Module,
        train: TrainConfig,
        optim: OptimConfig,
        sparsity: SparsityConfig,
        device: torch.device,
        world_size: int,
        global_batch_size: int,
    ) -> None:
        self.module = module
        self.grad_accum_steps = train.grad_accum_steps
        self.autocast = train.bf16 and device.type == "cuda"
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=ids)
        else:
            self.model = module
        self.optimizer = build_optimizer(optim, module.parameters())
        self.sparsity = DynamicSparsity(
            module, self.optimizer, sparsity, global_batch_size=global_batch_size
        )
        self._captured_grads = {}

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

    def step(self, capture_grads: bool = False) -> None:
        if capture_grads:
            self._captured_grads = _dense_grads(self.sparsity)
        self.sparsity.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> tuple[dict, dict]:
        shared = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sparsity": self.sparsity.state_dict(),
        }
        return shared, {}

    def load_state_dict(self, shared: dict, local: dict | None) -> None:
        self.module.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        self.sparsity.load_state_dict(shared["sparsity"])


def _dense_grads(sparsity: DynamicSparsity) -> dict[str, torch.Tensor]:
    return {
        name: sparsity.params[name].grad.detach().clone()
        for name in sparsity.sparse_names
        if sparsity.params[name].grad is not None
    }


# --------------------------------------------------------------------------- DeepSpeed
class DeepSpeedStrategy(Strategy):
    """DeepSpeed engine with ZeRO stage 0, 1 or 2; bf16 weights on CUDA, fp32 on CPU."""

    def __init__(
        self,
        module: nn.Module,
        train: TrainConfig,
        optim: OptimConfig,
        sparsity: SparsityConfig,
        micro_batch_size: int,
        device: torch.device,
        global_batch_size: int,
    ) -> None:
        import deepspeed  # heavy; only DeepSpeed runs pay for it

        if sparsity.growth == "momentum" and sparsity.is_dynamic:
            # Momentum growth keeps an EMA of the full gradient: it would need the partitioned
            # gradient reassembled on every step, defeating ZeRO's memory savings.
            raise ValueError(
                "sparsity.growth=momentum is not supported with train.strategy=deepspeed; "
                "use sparsity.growth=gradient or random (or train.strategy=ddp)"
            )
        bf16 = train.bf16 and device.type == "cuda"
        # Masks first, so that the fp32 masters DeepSpeed clones from the weights start masked.
        self.sparsity = DynamicSparsity(module, None, sparsity, global_batch_size=global_batch_size)
        optimizer = build_optimizer(optim, module.parameters())
        config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": train.grad_accum_steps,
            "zero_optimization": {"stage": train.zero_stage},
            "bf16": {"enabled": bf16},
            "zero_allow_untested_optimizer": True,  # plain torch SGD/AdamW
            "gradient_clipping": 0.0,
            "steps_per_print": 2**62,
        }
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        self.model = self.engine
        self.module = self.engine.module
        self.input_dtype = torch.bfloat16 if bf16 else torch.float32
        self._captured_grads = {}
        self.mask_masters_()

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer whose parameters are the (partitioned) fp32 masters."""
        optimizer = self.engine.optimizer
        return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer

    def set_lr(self, lr: float) -> None:
        set_learning_rate_(self.engine.optimizer, lr)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss)  # scales by 1/grad_accum_steps itself
        if not last:
            self.engine.step()  # only advances DeepSpeed's micro-step counter

    def step(self, capture_grads: bool = False) -> None:
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed step() called off a gradient-accumulation boundary")
        sparsity = self.sparsity
        update_due = sparsity.schedule.is_update_step(sparsity.num_steps + 1)
        grads = {}
        if capture_grads or (update_due and sparsity.config.growth == "gradient"):
            grads = self.full_gradients()  # before the step frees the partitioned gradients
        self.engine.step()
        # The step moved inactive masters (dense gradient, weight decay): zero them and their
        # state under the current masks *before* any regrowth, so grown weights start at 0.
        self.mask_masters_()
        with _grads_set(sparsity, grads), self._resets_followed(update_due):
            sparsity.step()  # masks the (bit16) model weights, prune/grow when due
        self._captured_grads = grads if capture_grads else {}

    def explore(self, drop_fraction: float, growth: str) -> None:
        with self._resets_followed(True):
            super().explore(drop_fraction, growth)

    @contextlib.contextmanager
    def _resets_followed(self, update: bool) -> Iterator[None]:
        """Carry a prune/grow made on the model weights over to the masters and their state:
        DynamicSparsity zeroes the dropped and grown positions (``last_reset``) in the model
        weights only."""
        num_updates = self.sparsity.num_updates
        yield
        if update and self.sparsity.num_updates != num_updates:
            self.mask_masters_({n: r.reshape(-1) for n, r in self.sparsity.last_reset.items()})

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """The all-reduced gradient of every sparse layer, reassembled from the ZeRO partitions
        (valid after the last backward of a step and before `engine.step()`)."""
        from deepspeed.utils import safe_get_full_grad

        grads = {}
        for name in self.sparsity.sparse_names:
            grad = safe_get_full_grad(self.sparsity.params[name])
            if grad is None:
                raise RuntimeError(f"DeepSpeed holds no gradient for {name}")
            grads[name] = grad.detach().float().clone()
        return grads

    @torch.no_grad()
    def mask_masters_(self, also_reset: dict[str, torch.Tensor] | None = None) -> None:
        """Zero the fp32 masters and optimizer state of inactive weights (and of the flat
        positions in ``also_reset``) in this rank's partition (ZeRO 1/2, bf16) or, without
        partitions (ZeRO 0 fp32), in the weights themselves."""
        base = self.base_optimizer
        for name in self.sparsity.sparse_names:
            param = self.sparsity.params[name]
            inactive = ~self.sparsity.masks[name].reshape(-1)
            if also_reset is not None:
                inactive = inactive | also_reset[name]
            if not hasattr(param, "_hp_mapping"):  # the model weight is its own master
                param.data.masked_fill_(inactive.view(param.shape), 0.0)  # any memory format
                _mask_state_(base.state.get(param, {}), param, inactive, 0)
                continue
            fragment = param._hp_mapping
            if fragment is None:  # no part of this weight lives in this rank's partition
                continue
            lp, hp = fragment.lp_fragment_address, fragment.hp_fragment_address
            part = inactive.narrow(0, lp.start, lp.numel)
            fragment.hp_fragment.masked_fill_(part, 0.0)
            flat = base.param_groups[fragment.param_group_index]["params"][0]
            _mask_state_(base.state.get(flat, {}), flat, part, hp.start)

    def state_dict(self) -> tuple[dict, dict]:
        shared = {"model": self.module.state_dict(), "sparsity": self.sparsity.state_dict()}
        base = self.base_optimizer
        local = {
            "masters": [p.detach().clone() for g in base.param_groups for p in g["params"]],
            "optimizer": base.state_dict(),
        }
        return shared, local

    def load_state_dict(self, shared: dict, local: dict | None) -> None:
        if local is None:
            raise ValueError(
                "this DeepSpeed checkpoint has no optimizer partition for this rank: resume "
                "with the same train.num_workers it was written with"
            )
        self.module.load_state_dict(shared["model"])
        base = self.base_optimizer
        masters = [p for g in base.param_groups for p in g["params"]]
        if len(masters) != len(local["masters"]):
            raise ValueError("DeepSpeed checkpoint has a different parameter-group layout")
        with torch.no_grad():
            for master, saved in zip(masters, local["masters"], strict=True):
                master.copy_(saved)
        base.load_state_dict(local["optimizer"])
        self.sparsity.load_state_dict(shared["sparsity"])
        self.mask_masters_()


def _mask_state_(state: dict, owner: torch.Tensor, inactive: torch.Tensor, start: int) -> None:
    """Zero ``inactive`` flat positions (from ``start``) of every state tensor shaped like
    ``owner`` (momentum buffer, Adam moments; not the scalar step count)."""
    for value in state.values():
        if not (torch.is_tensor(value) and value.shape == owner.shape):
            continue
        if value.dim() > 1:  # weight-shaped (ZeRO 0): logical positions, channels_last too
            value.masked_fill_(inactive.view(value.shape), 0.0)
        else:  # a flat ZeRO partition
            value.narrow(0, start, inactive.numel()).masked_fill_(inactive, 0.0)
