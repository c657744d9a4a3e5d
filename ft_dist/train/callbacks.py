"""The loop's standard subscribers (events.py), in the order `standard_callbacks` gives them:

* `Tracking`: W&B / console metrics at every ``log`` event, the summary at ``finish``;
* `FiniteGuard`: a NaN/inf loss stops the run where it is logged, and non-finite weights
  stop it before a ticket or checkpoint is taken from them (finite.py);
* `Validation`: the validation split after the epochs the plan or the config asks;
* `Tickets`: each epoch's weights offered as the plan's ticket candidate; the ticket written
  at the phase's end;
* `DynamicSparseTraining`: the DST engine on both sides of every optimizer step (masks,
  prune and grow, channel removal), and the plan's global exploration (EDST) after the
  ticket, growing from the dense gradient captured at the epoch's last step when its growth
  reads a gradient.

At ``epoch_end`` each adds what it measured to the epoch's ``metrics``, which the loop then
logs; so Validation precedes Tickets (which read its accuracy) and the exploration follows
them (it moves the weights the ticket was taken from).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ft_dist.sparse.health import churn_warning
from ft_dist.sparse.scores import growth_criterion
from ft_dist.train.events import Callback
from ft_dist.train.finite import check_loss, check_weights
from ft_dist.train.methods.base import EpochActions
from ft_dist.train.optim import learning_rate
from ft_dist.train.session import latest_complete_checkpoint
from ft_dist.train.setup import Context, flops_per_example_so_far
from ft_dist.train.strategies.base import Strategy
from ft_dist.train.validate import evaluate_split

# Whether grown weights live (sparse/dynamic.py survival_stats): the console and W&B
# summary show them next to the accuracy they explain.
SURVIVAL_KEYS = ("sparse/grown_kept_run", "sparse/effective_density")


def standard_callbacks() -> list[Callback]:
    return [Tracking(), FiniteGuard(), Validation(), Tickets(), DynamicSparseTraining()]


class Tracking(Callback):
    def on_log(self, ctx: Context, metrics: dict[str, Any]) -> None:
        ctx.tracker.log(metrics, step=ctx.state.global_step)

    def on_finish(self, ctx: Context, summary: dict[str, Any]) -> None:
        survival = {k: v for k, v in summary.items() if k in SURVIVAL_KEYS}
        ctx.tracker.summary(
            {**summary["metrics"], "train/flops": summary["train_flops"], **survival}
        )


class FiniteGuard(Callback):
    def on_log(self, ctx: Context, metrics: dict[str, Any]) -> None:
        if "train/loss" in metrics:  # synced over ranks: every rank stops together
            check_loss(metrics["train/loss"], _where(ctx, metrics["train/lr"]))

    def on_before_checkpoint(self, ctx: Context, lr: float) -> None:
        check_weights(ctx.strategy.module, "checkpoint", _where(ctx, lr))

    def on_epoch_end(self, ctx, epoch, actions, metrics) -> None:
        # Before any ticket candidate, ticket or checkpoint is taken from these weights.
        check_weights(ctx.strategy.module, "ticket and checkpoint", _where(ctx, actions))


class Validation(Callback):
    def on_epoch_end(self, ctx, epoch, actions, metrics) -> None:
        cfg = ctx.cfg
        last_epoch = epoch == ctx.num_epochs - 1
        scheduled = (epoch + 1) % cfg.train.eval_every_epochs == 0 or last_epoch
        if cfg.data.val_split and (scheduled or actions.validate):
            metrics.update(evaluate(ctx, cfg.data.val_split))


class Tickets(Callback):
    def on_epoch_end(self, ctx, epoch, actions, metrics) -> None:
        val_accuracy = metrics.get(f"{ctx.cfg.data.val_split}/accuracy")
        module, masks = ctx.strategy.module, ctx.strategy.sparsity.masks
        channels = ctx.strategy.sparsity.channels
        cut = channels.cut_record() if channels is not None else None
        if actions.ticket is not None and val_accuracy is not None:
            ctx.tickets.observe(actions.ticket, epoch, val_accuracy, module, masks, cut)
        if actions.write_ticket:
            ctx.tickets.finalise(
                actions.ticket,
                phase=actions.ticket,
                epoch=epoch,
                val_accuracy=val_accuracy,
                module=module,
                masks=masks,
                member=actions.member,
                train_flops=flops_per_example_so_far(ctx) * ctx.state.images_seen,
                write=ctx.session.rank == 0,
                cut=cut,
            )


class DynamicSparseTraining(Callback):
    """The DST engine around every optimizer step (the strategy's two halves: the engine
    sees the full gradients before, re-masks, prunes, grows and removes channels after, and
    the strategy zeroes the reset positions in its own copies), and the plan's global
    exploration (EDST) after the epoch's ticket. An exploration that grows by gradient reads
    the dense gradient of the epoch's last step: that step asks the strategy to keep it."""

    capture_at = -1  # step of the epoch whose dense gradient is kept
    churn_told = False  # the grown-weights warning is given once per run

    def __init__(self) -> None:
        self.epoch_losses: list[float] = []  # the epoch's logged train losses (rank-synced)

    def on_epoch_start(self, ctx: Context, epoch: int, actions: EpochActions) -> None:
        growth = actions.explore[1] if actions.explore else None
        needs_gradient = growth is not None and growth_criterion(growth).needs_gradient
        self.capture_at = ctx.steps_per_epoch - 1 if needs_gradient else -1
        self.epoch_losses = []

    def on_log(self, ctx: Context, metrics: dict[str, Any]) -> None:
        if "train/loss" in metrics:
            self.epoch_losses.append(float(metrics["train/loss"]))

    def on_step_start(self, ctx: Context) -> None:
        ctx.strategy.begin_step(ctx.state.step_in_epoch == self.capture_at)

    def on_before_optimizer_step(self, ctx: Context) -> None:
        ctx.strategy.before_optimizer_step()

    def on_after_optimizer_step(self, ctx: Context) -> None:
        ctx.strategy.after_optimizer_step()

    def on_epoch_end(self, ctx, epoch, actions, metrics) -> None:
        self.tell_churn(ctx, epoch)
        if actions.explore is not None:
            ctx.strategy.explore(*actions.explore)
            metrics.update({f"explore/{k}": v for k, v in sparse_totals(ctx.strategy).items()})

    def tell_churn(self, ctx: Context, epoch: int) -> None:
        """Grown weights that do not survive mean the run trains a smaller static mask; say
        so once, with the fixes, where it shows in the loss: from the second epoch on (every
        model is near chance in its first) and the third update (the second that measures
        survival), the epoch's mean train loss still high (sparse/health.py)."""
        sparsity = ctx.strategy.sparsity
        if self.churn_told or epoch < 1 or sparsity.num_updates < 3 or not self.epoch_losses:
            return
        loss = sum(self.epoch_losses) / len(self.epoch_losses)
        warning = churn_warning(*sparsity.grown_kept, loss, ctx.info.num_classes)
        if warning is not None:
            self.churn_told = True
            ctx.tracker.note(warning)


# --------------------------------------------------------------------------- shared
def evaluate(ctx: Context, split: str) -> dict[str, float]:
    """Accuracy and NLL of the model on ``split`` (every rank reads its share)."""
    return evaluate_split(
        ctx.strategy.module,
        ctx.cfg.data,
        split,
        info=ctx.info,
        rank=ctx.session.rank,
        world_size=ctx.session.world_size,
        device=ctx.session.device,
        input_dtype=ctx.strategy.input_dtype,
        channels_last=ctx.fast_path and ctx.cfg.train.channels_last,
        collective=ctx.strategy.collective_forward,
    )


def sparse_totals(strategy: Strategy) -> dict[str, float]:
    """The masks' whole-model statistics (not the per-layer ones)."""
    stats = strategy.sparsity.stats()
    return {k: v for k, v in stats.items() if k.startswith("sparse/") and "/layer/" not in k}


def _where(ctx: Context, lr: float | EpochActions) -> Callable[[], dict[str, Any]]:
    """Where the run is, for a divergence message (finite.py): the LR given, or the LR of
    the epoch's last step under these actions; read only when the message is needed."""

    def where() -> dict[str, Any]:
        state = ctx.state
        if isinstance(lr, EpochActions):
            steps = (ctx.steps_per_epoch, ctx.num_epochs, lr.lr_scale)
            rate = learning_rate(
                ctx.cfg.optim,
                max(state.global_step - 1, 0),
                *steps,
                global_batch_size=ctx.global_batch_size,
            )
        else:
            rate = lr
        return {
            "step": state.global_step,
            "epoch": state.epoch,
            "lr": rate,
            "last_checkpoint": latest_complete_checkpoint(ctx.run),
        }

    return where
