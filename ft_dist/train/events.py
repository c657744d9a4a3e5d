"""The loop's events, and the subscribers' interface (composer's events, made small).

The loop (loop.py) raises, in this order within a run:

    epoch_start(ctx, epoch, actions)      the plan's actions for the epoch are known
    step_start(ctx)                       before the step's first forward
    before_optimizer_step(ctx)            after the last backward; `strategy.optimizer_step()` follows
    after_optimizer_step(ctx)             right after it (DST masks, prunes and grows here)
    after_step(ctx, loss)                 the step is counted
    log(ctx, metrics)                     the loop logs step metrics (loss synced over ranks)
    before_checkpoint(ctx, lr)            a mid-epoch checkpoint is about to be written
    epoch_end(ctx, epoch, actions, metrics)  after the epoch; subscribers add to ``metrics``
    checkpoint(ctx, path)                 a checkpoint was written
    model_replaced(ctx, old)              ``ctx.strategy`` holds a new model (`replace_model`)
    finish(ctx, summary)                  summary.json is written

A subscriber is a `Callback` overriding the methods it needs; each is called in the order
the subscribers were given, so one may read what an earlier one wrote (``metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ft_dist.train.methods.base import EpochActions
    from ft_dist.train.setup import Context
    from ft_dist.train.strategies.base import Strategy


class Callback:
    """Every event as a no-op; a subscriber overrides the ones it handles."""

    def on_epoch_start(self, ctx: Context, epoch: int, actions: EpochActions) -> None: ...

    def on_step_start(self, ctx: Context) -> None: ...

    def on_before_optimizer_step(self, ctx: Context) -> None: ...

    def on_after_optimizer_step(self, ctx: Context) -> None: ...

    def on_after_step(self, ctx: Context, loss: torch.Tensor) -> None: ...

    def on_log(self, ctx: Context, metrics: dict[str, Any]) -> None: ...

    def on_before_checkpoint(self, ctx: Context, lr: float) -> None: ...

    def on_epoch_end(
        self, ctx: Context, epoch: int, actions: EpochActions, metrics: dict[str, Any]
    ) -> None: ...

    def on_checkpoint(self, ctx: Context, path: str) -> None: ...

    def on_model_replaced(self, ctx: Context, old: Strategy) -> None: ...

    def on_finish(self, ctx: Context, summary: dict[str, Any]) -> None: ...


class Events:
    """The subscribers of one run: ``events.fire("log", ctx, metrics)`` calls every
    subscriber's ``on_log(ctx, metrics)``, in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = tuple(callbacks)

    def fire(self, event: str, *args: Any) -> None:
        handler = f"on_{event}"
        if not hasattr(Callback, handler):
            raise ValueError(f"no loop event {event!r}")
        for callback in self.callbacks:
            getattr(callback, handler)(*args)
