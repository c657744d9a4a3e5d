"""What every strategy is: the loop's interface, and the one DST hook around the optimizer step.

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
`safe_{get,set}_full_{fp32_param,optimizer_state}`. A new strategy (FSDP) is one such class
in its own module plus its line in the table (strategies/__init__.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.scores import growth_criterion
from ft_dist.sparse.slim import slim_tensor
from ft_dist.train.config import OptimConfig, TrainConfig
from ft_dist.train.strategies import check_strategy_supports, strategy_entry

Grads = dict[str, torch.Tensor]


class Strategy:
    """What the loop needs; subclasses fill in their optimizer step and state."""

    model: nn.Module  # call this for the forward pass (possibly wrapped)
    module: nn.Module  # the bare model: parameter names without wrapper prefixes
    sparsity: DynamicSparsity
    input_dtype: torch.dtype = torch.float32
    # Is a forward of ``module`` collective (FSDP2 all-gathers)? Then evaluation runs the
    # same number of batches on every rank (validate.py).
    collective_forward: bool = False
    _capture: bool = False  # this step's dense gradient is kept for an exploration
    _captured_grads: Grads | None = None

    # ---------------------------------------------------------------- the one DST hook point
    def begin_step(self, capture_grads: bool = False) -> None:
        """Before the step's first backward: ``capture_grads`` keeps its dense gradient for
        a following `explore(..., growth="gradient")` (EDST global exploration)."""
        self._capture = capture_grads
        self.sparsity.keep_dense_gradients(capture_grads)

    def step(self) -> None:
        """One optimizer step with DST around it, identical for every strategy (the loop
        raises events around `optimizer_step` instead, `DynamicSparseTraining` in
        callbacks.py calls the two halves, and the loop then asks `cut_pending`)."""
        self.before_optimizer_step()
        self.optimizer_step()
        self.after_optimizer_step()
        if self.cut_pending():
            self.shrunk()

    def before_optimizer_step(self) -> None:
        """DST's first half: hand the engine the full gradients when it wants them (keeping
        a copy when `begin_step` asked), so it masks them before the optimizer reads them."""
        sparsity = self.sparsity
        grads = self.full_gradients() if sparsity.wants_dense_gradients() else None
        if self._capture:
            source = grads if grads is not None else sparsity.current_gradients()
            self._captured_grads = {n: g.detach().clone() for n, g in source.items()}
            self._capture = False
        sparsity.before_optimizer_step(grads)

    def after_optimizer_step(self) -> None:
        """DST's second half: the engine re-masks, prunes and grows when due (and removes
        channels); the positions it reset are zeroed in this strategy's own copies."""
        self.apply_resets(self.sparsity.after_optimizer_step())

    def explore(self, drop_fraction: float, growth: str) -> None:
        """One out-of-schedule DST update (EDST), gradient growth reading the gradient
        captured at the last step."""
        grads = self._captured_grads
        if growth_criterion(growth).needs_gradient and not grads:
            raise RuntimeError("gradient exploration needs begin_step(capture_grads=True) first")
        self.apply_resets(self.sparsity.explore(drop_fraction, growth, grads=grads))
        self._captured_grads = None

    # ---------------------------------------------------------------- shrinking
    def cut_pending(self) -> bool:
        """Channels were removed at this step and the run shrinks (channel_shrink)."""
        return self.sparsity.cut_pending()

    def shrunk(self) -> Strategy:
        """This strategy with the removed channels cut out of its model: the engine cuts
        the model and everything shaped like its parameters, the strategy rebuilds its
        wrappers (`rewrap`). Every rank, same step; returns ``self``."""
        vectors = self.sparsity.cut_channels_()
        if self._captured_grads:  # an exploration at this epoch's end grows from them
            self._captured_grads = {
                n: slim_tensor(g, vectors.get(n, {})) for n, g in self._captured_grads.items()
            }
        self.rewrap(vectors)
        return self

    def cut_to(self, cut_alive: dict[str, torch.Tensor]) -> None:
        """Cut the freshly built model as a checkpoint's was (before its states load)."""
        self.rewrap(self.sparsity.cut_to(cut_alive))

    def rewrap(self, vectors: dict[str, dict[int, torch.Tensor]]) -> None:
        """Rebuild the wrappers around the cut model; ``vectors``: per parameter and dim,
        the positions of its old shape that stay."""
        raise NotImplementedError

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

    def sharded_states(self) -> dict:
        """Stateful objects holding DTensor shards, saved and resharded with
        torch.distributed.checkpoint (FSDP2); restored before the others."""
        return {}

    def channel_cut_state(self) -> dict:
        """The checkpoint entry restoring the model's channel cut, first of all (empty
        without channel-level DST)."""
        return {"channel_cut": ChannelCut(self)} if self.sparsity.channels is not None else {}


class ChannelCut:
    """A checkpoint's record of the channels cut out of the model (a shrinking run): on
    load, the freshly built model is cut alike before weights and optimizer load. Optional:
    a checkpoint of a masked run has none (the cut then happens at the next step)."""

    optional = True

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def state_dict(self) -> dict:
        channels = self.strategy.sparsity.channels
        return {"cut_alive": {n: v.clone() for n, v in channels.cut_alive.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["cut_alive"]:
            self.strategy.cut_to({n: v.bool() for n, v in state["cut_alive"].items()})


@dataclass(frozen=True)
class StrategySetup:
    """What every strategy is built from (the same for all of them)."""

    train: TrainConfig
    optim: OptimConfig
    sparsity: SparsityConfig
    micro_batch_size: int
    device: torch.device
    world_size: int
    global_batch_size: int
    # one input's shape (no batch dim): channel-level DST traces the model at once
    input_shape: tuple[int, ...] | None = None
    # step -> (start, length) of the drop-fraction cosine (a run plan's), or None
    decay_period: Callable[[int], tuple[int, int] | None] | None = None


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
    input_shape: tuple[int, ...] | None = None,
) -> Strategy:
    """Wrap ``module`` (already on ``device``) for data parallelism and attach DST to it.
    ``decay_period``: step -> (start, length) of the drop-fraction cosine (a run plan's)."""
    entry = strategy_entry(train.strategy)
    check_strategy_supports(train.strategy, sparsity)
    setup = StrategySetup(
        train=train,
        optim=optim,
        sparsity=sparsity,
        micro_batch_size=micro_batch_size,
        device=device,
        world_size=world_size,
        global_batch_size=micro_batch_size * train.grad_accum_steps * world_size,
        decay_period=decay_period,
        input_shape=input_shape,
    )
    return entry.load()(module, setup)
