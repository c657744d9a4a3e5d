"""The per-worker training loop: one member (or one EDST run) on one data-parallel rank.

    summary = train(cfg, session, tracker)

Runs the same with no Ray (`LocalSession`: one process or torch.distributed env vars) and
inside Ray Train (`RaySession`). Read `train` top to bottom:

1. setup (setup.py): data, then identically seeded model, masks and strategy on every rank;
2. resume after everything exists, so a checkpoint restores into the same objects (all of
   them listed once, in `checkpoint_states`); only then is config.yaml written, so a
   refused resume leaves the run's record as it was;
3. each epoch: the run plan (plan.py: single run or EDST) says the LR factor, the ticket
   and an exploration; micro-batches, one optimizer step, logs; at its end validation,
   ticket candidates and writes, exploration, then a checkpoint;
4. finish: final metrics and summary.json.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ft_dist.config import RunConfig, save_config
from ft_dist.layout import CONFIG_FILE, SUMMARY_FILE, checkpoints_dir, ticket_relpath
from ft_dist.sparse.scores import growth_criterion
from ft_dist.train.finite import check_loss, check_weights
from ft_dist.train.methods.base import EpochActions
from ft_dist.train.optim import learning_rate
from ft_dist.train.session import Session, latest_complete_checkpoint
from ft_dist.train.setup import Context, build_context, flops_per_example_so_far, model_facts
from ft_dist.train.state import RNGState, TrainStates
from ft_dist.train.strategies import strategy_entry
from ft_dist.train.strategies.base import Strategy
from ft_dist.train.validate import evaluate_split, prepare_images, sync_buffers_
from ft_dist.utils import is_distributed, write_text_atomic


def train(cfg: RunConfig, session: Session, tracker: Any) -> dict[str, Any]:
    """Train this rank's share of the run; returns the summary (identical on every rank)."""
    # Data, seeds, model, masks and strategy, in the order that keeps ranks identical.
    ctx = build_context(cfg, session, tracker)
    cfg = ctx.cfg  # with the model's shape resolved from the data manifest
    # Resume after everything exists, so the checkpoint restores into the same objects.
    resume_from = session.latest_checkpoint_dir()
    if resume_from is not None:
        # The one restored: resume_from, or the older one it fell back to when damaged.
        resumed = checkpoint_states(ctx).load(
            resume_from, rank=session.rank, expected_meta=run_meta(ctx)
        )
        state = ctx.state
        tracker.note(
            f"resumed from {resumed}: epoch {state.epoch}, step {state.global_step} "
            f"of {ctx.steps_per_epoch * ctx.num_epochs}, {state.images_seen} images seen"
        )
    if session.rank == 0:
        save_config(cfg, ctx.run / CONFIG_FILE)
    tracker.set_total(ctx.steps_per_epoch * ctx.num_epochs, ctx.num_epochs)
    for epoch in range(ctx.state.epoch, ctx.num_epochs):
        actions = ctx.plan.epoch(epoch)
        train_epoch(ctx, epoch, actions)
        end_epoch(ctx, epoch, actions)
    return finish(ctx)


# --------------------------------------------------------------------------- one epoch
def train_epoch(ctx: Context, epoch: int, actions: EpochActions) -> None:
    """The optimizer steps of one epoch, from the resume position: LR, step, logs, and
    mid-epoch checkpoints."""
    cfg, state = ctx.cfg, ctx.state
    # Fixed per run when elastic: the accumulation makes up for a smaller world size.
    accum, global_batch = ctx.grad_accum_steps, ctx.global_batch_size
    batches = iter(ctx.stream.epoch(epoch, start_step=state.step_in_epoch * accum))
    # An exploration that grows by gradient reads the dense gradient of the epoch's last step.
    explore_growth = actions.explore[1] if actions.explore else None
    needs_gradient = explore_growth is not None and growth_criterion(explore_growth).needs_gradient
    capture_at = ctx.steps_per_epoch - 1 if needs_gradient else -1
    meter = Meter(ctx.session.device)
    while state.step_in_epoch < ctx.steps_per_epoch:
        lr = learning_rate(
            cfg.optim,
            state.global_step,
            ctx.steps_per_epoch,
            ctx.num_epochs,
            actions.lr_scale,
            global_batch_size=global_batch,
        )
        ctx.strategy.set_lr(lr)
        micro_batches = [next(batches) for _ in range(accum)]
        loss = train_step(ctx, micro_batches, capture_grads=state.step_in_epoch == capture_at)
        state.step_in_epoch, state.global_step = state.step_in_epoch + 1, state.global_step + 1
        state.images_seen += global_batch
        meter.add(loss, global_batch)
        epoch_done = state.step_in_epoch == ctx.steps_per_epoch
        if epoch_done or state.global_step % cfg.train.log_every_steps == 0:
            mean_loss, images_per_s, seconds = meter.read()
            state.train_seconds += seconds
            # The loss is synced here anyway: a NaN/inf one stops the run (finite.py).
            check_loss(log_progress(ctx, epoch, lr, mean_loss, images_per_s), _where(ctx, lr))
        every = cfg.train.checkpoint_every_steps
        if every and not epoch_done and state.global_step % every == 0:
            check_weights(ctx.strategy.module, "checkpoint", _where(ctx, lr))
            with meter.excluded():
                ctx.session.report(_progress_metrics(ctx, epoch), save(ctx))
    batches.close()  # stop the loader's worker processes now, not at garbage collection


class Meter:
    """Mean training loss and images/s since the last read, not counting excluded time
    (checkpoints); the loss stays on the device until read, so steps never sync for it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps, self.images, self.skipped = 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps, self.images = self.steps + 1, self.images + images

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.skipped += time.perf_counter() - start

    def read(self) -> tuple[torch.Tensor, float, float]:
        """(mean loss, images/s, training seconds) since the last read; then reset."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start - self.skipped, 1e-9)
        values = (self.loss_sum / max(self.steps, 1), self.images / seconds, seconds)
        self._reset()
        return values


def train_step(ctx: Context, micro_batches: list, capture_grads: bool) -> torch.Tensor:
    """Forward/backward every micro-batch, then one optimizer step (masks, prune/grow)."""
    strategy, device = ctx.strategy, ctx.session.device
    channels_last = ctx.fast_path and ctx.cfg.train.channels_last
    total = torch.zeros((), device=device)
    strategy.begin_step(capture_grads)
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        images = prepare_images(images, device, strategy.input_dtype, channels_last)
        with strategy.micro_batch(last):
            loss = ctx.criterion(strategy.model(images).float(), labels.to(device))
            strategy.backward(loss, last)
        total += loss.detach()
    strategy.step()
    return total / len(micro_batches)


def end_epoch(ctx: Context, epoch: int, actions: EpochActions) -> None:
    """Validate, keep/write the plan's ticket, explore if planned, checkpoint, report."""
    cfg, state, strategy = ctx.cfg, ctx.state, ctx.strategy
    sync_buffers_(strategy.module)
    # Before any ticket candidate, ticket or checkpoint is taken from these weights.
    check_weights(strategy.module, "ticket and checkpoint", _where(ctx, actions))
    last_epoch = epoch == ctx.num_epochs - 1
    metrics = _progress_metrics(ctx, epoch + 1)
    scheduled = (epoch + 1) % cfg.train.eval_every_epochs == 0 or last_epoch
    if cfg.data.val_split and (scheduled or actions.validate):
        metrics.update(_evaluate(ctx, cfg.data.val_split))
    val_accuracy = metrics.get(f"{cfg.data.val_split}/accuracy")
    if actions.ticket is not None and val_accuracy is not None:
        ctx.tickets.observe(actions.ticket, epoch, val_accuracy, strategy.module, _masks(ctx))
    if actions.write_ticket:
        _write_ticket(ctx, actions, epoch, val_accuracy)
    if actions.explore is not None:
        strategy.explore(*actions.explore)
        metrics.update({f"explore/{k}": v for k, v in _sparse_totals(strategy).items()})
    state.epoch, state.step_in_epoch = epoch + 1, 0
    ctx.tracker.log(metrics, step=state.global_step)
    every = cfg.train.checkpoint_every_epochs
    saved = save(ctx) if last_epoch or (epoch + 1) % every == 0 else None
    ctx.session.report(metrics, saved)


def finish(ctx: Context) -> dict[str, Any]:
    """Final metrics and RUN_DIR/summary.json."""
    cfg, state, strategy = ctx.cfg, ctx.state, ctx.strategy
    sync_buffers_(strategy.module)
    metrics: dict[str, float] = {}
    for split in (cfg.data.val_split, cfg.data.test_split):
        if split:
            metrics.update(_evaluate(ctx, split))
    price = flops_per_example_so_far(ctx)
    summary = {
        "run_name": cfg.train.run_name,
        "method": cfg.ensemble.method,
        "member": cfg.train.member,
        "model": cfg.model.name,
        "density": cfg.sparsity.density,
        "epochs": ctx.num_epochs,
        "steps": state.global_step,
        "world_size": ctx.session.world_size,
        "images_seen": state.images_seen,
        "train_seconds": state.train_seconds,
        "images_per_s": state.images_seen / max(state.train_seconds, 1e-9),
        "train_flops": price * state.images_seen,
        "train_flops_per_example": price,
        "tickets": [ticket_relpath(n) for n in ctx.tickets.written],
        "metrics": metrics,
        **_sparse_totals(strategy),
    }
    if ctx.session.rank == 0:
        write_text_atomic(ctx.run / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    ctx.tracker.summary({**metrics, "train/flops": summary["train_flops"]})
    return summary


# --------------------------------------------------------------------------- checkpoints
def checkpoint_states(ctx: Context) -> TrainStates:
    """Every resumable object of the run, in restore order (SPEC §9)."""
    replicated, per_rank = ctx.strategy.checkpoint_states()
    return TrainStates(
        replicated={**replicated, "loop": ctx.state, "tickets": ctx.tickets},
        per_rank={**per_rank, "rng": RNGState()},
    )


def save(ctx: Context) -> str:
    """Write a checkpoint of everything that changes training (collective: every rank)."""
    state = ctx.state
    position = {  # for people and `ft-dist train`'s stop line, not checked on resume
        "epochs_done": state.epoch + state.step_in_epoch / ctx.steps_per_epoch,
        "num_epochs": ctx.num_epochs,
        "total_steps": ctx.steps_per_epoch * ctx.num_epochs,
    }
    path = checkpoint_states(ctx).save(
        checkpoints_dir(ctx.run),
        ctx.state.global_step,
        {**run_meta(ctx), **position},
        rank=ctx.session.rank,
        keep=ctx.cfg.train.keep_checkpoints,
    )
    return str(path)


def run_meta(ctx: Context) -> dict[str, Any]:
    """What wrote a checkpoint; a resume must match it (checkpoint.check_compatible)."""
    cfg = ctx.cfg
    meta = {
        **model_facts(cfg),
        **strategy_entry(cfg.train.strategy).checkpoint_meta(cfg.train),
        "world_size": ctx.session.world_size,
    }
    if cfg.train.elastic or cfg.train.global_batch_size is not None:
        meta["elastic_lanes"] = max(1, cfg.data.loader_workers)  # the epoch's layout
    return meta


# --------------------------------------------------------------------------- helpers
def _evaluate(ctx: Context, split: str) -> dict[str, float]:
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
    )


def _masks(ctx: Context) -> dict[str, torch.Tensor]:
    return ctx.strategy.sparsity.masks


def _write_ticket(
    ctx: Context, actions: EpochActions, epoch: int, val_accuracy: float | None
) -> None:
    ctx.tickets.finalise(
        actions.ticket,
        phase=actions.ticket,
        epoch=epoch,
        val_accuracy=val_accuracy,
        module=ctx.strategy.module,
        masks=_masks(ctx),
        member=actions.member,
        train_flops=flops_per_example_so_far(ctx) * ctx.state.images_seen,
        write=ctx.session.rank == 0,
    )


def log_progress(ctx: Context, epoch: int, lr: float, loss: torch.Tensor, rate: float) -> float:
    """Log the loss averaged over ranks, LR, throughput, FLOPs so far and the masks'
    statistics; returns that loss."""
    if is_distributed():
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    state = ctx.state
    metrics = {
        "epoch": epoch + state.step_in_epoch / ctx.steps_per_epoch,
        "train/loss": float(loss),
        "train/lr": lr,
        "train/images_per_s": rate,
        "train/flops": flops_per_example_so_far(ctx) * state.images_seen,
        **ctx.strategy.sparsity.stats(),
    }
    ctx.tracker.log(metrics, step=state.global_step)
    return metrics["train/loss"]


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


def _progress_metrics(ctx: Context, epoch: float) -> dict[str, float]:
    state = ctx.state
    return {
        "epoch": float(epoch),
        "train/flops": flops_per_example_so_far(ctx) * state.images_seen,
    }


def _sparse_totals(strategy: Strategy) -> dict[str, float]:
    stats = strategy.sparsity.stats()
    return {k: v for k, v in stats.items() if k.startswith("sparse/") and "/layer/" not in k}
