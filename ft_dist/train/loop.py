"""The per-worker training loop: one member (or one EDST run) on one data-parallel rank.

    summary = train(cfg, session, tracker)

Runs the same with no Ray (`LocalSession`: one process or torch.distributed env vars) and
inside Ray Train (`RaySession`). Read `train` top to bottom:

0. a resume must continue the run it resumes (definition.py): a changed definition is
   refused, and another number of workers keeps the run's global batch;
1. setup (setup.py): data, then identically seeded model, masks and strategy on every rank;
2. resume after everything exists, so a checkpoint restores into the same objects (all of
   them listed once, in `checkpoint_states`); only then is config.yaml written, so a
   refused resume leaves the run's record as it was;
3. each epoch: the run plan (train/methods) says the LR factor, the ticket and an
   exploration; micro-batches, one optimizer step, logs; at its end the subscribers
   (callbacks.py: validation, tickets, exploration, the non-finite guard, tracking) act
   on the ``epoch_end`` event, then a checkpoint;
4. finish: final metrics and summary.json.

The loop raises the events of events.py and never asks which method, strategy or criterion
runs: a new one changes no line here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ft_dist.config import RunConfig, save_config
from ft_dist.layout import (
    checkpoints_dir,
    config_path,
    run_dir,
    summary_path,
    ticket_relpath,
)
from ft_dist.train.callbacks import evaluate, sparse_totals, standard_callbacks
from ft_dist.train.definition import settle_resume
from ft_dist.train.events import Callback, Events
from ft_dist.train.meter import Meter
from ft_dist.train.optim import learning_rate
from ft_dist.train.session import Session
from ft_dist.train.setup import Context, build_context, flops_per_example_so_far, model_facts
from ft_dist.train.state import RNGState, TrainStates
from ft_dist.train.strategies import strategy_entry
from ft_dist.train.strategies.base import Strategy
from ft_dist.train.validate import prepare_images, running_stats_kept, sync_buffers_
from ft_dist.utils import is_distributed, write_text_atomic


def train(
    cfg: RunConfig,
    session: Session,
    tracker: Any,
    callbacks: Sequence[Callback] = (),
    *,
    allow_change: Sequence[str] = (),
) -> dict[str, Any]:
    """Train this rank's share of the run; returns the summary (identical on every rank).
    ``callbacks`` subscribe to the loop's events after the standard ones; ``allow_change``
    names the keys of the run's definition a resume may change (definition.py)."""
    # A resume must train the run it continues: refused, or its global batch kept, first.
    resume_from = session.latest_checkpoint_dir()
    settled = settle_resume(
        cfg,
        run_dir(cfg.train),
        session.world_size,
        resume_from,
        allow_change,
        write=session.rank == 0,
    )
    # Data, seeds, model, masks and strategy, in the order that keeps ranks identical.
    ctx = build_context(settled.cfg, session, tracker)
    ctx.definition = settled.meta()
    for note in settled.notes:
        tracker.note(note)
    events = Events([*standard_callbacks(), *callbacks])
    # Resume after everything exists, so the checkpoint restores into the same objects.
    if resume_from is not None:
        # The one restored: resume_from, or the older one it fell back to when damaged.
        resumed = checkpoint_states(ctx).load(
            resume_from, rank=session.rank, expected_meta=run_meta(ctx)
        )
        state = ctx.state
        tracker.note(
            f"resumed from {resumed}: epoch {state.epoch}, step {state.global_step} "
            f"of {ctx.steps_per_epoch * ctx.num_epochs}, {state.images_seen} images seen, on "
            f"{session.world_size} worker(s)"
        )
    if session.rank == 0:
        save_config(ctx.cfg, config_path(ctx.run))  # with the model's shape from the data
    tracker.set_total(ctx.steps_per_epoch * ctx.num_epochs, ctx.num_epochs)
    for epoch in range(ctx.state.epoch, ctx.num_epochs):
        actions = ctx.plan.epoch(epoch)
        events.fire("epoch_start", ctx, epoch, actions)
        train_epoch(ctx, events, epoch, actions.lr_scale)
        end_epoch(ctx, events, epoch, actions)
    return finish(ctx, events)


def train_epoch(ctx: Context, events: Events, epoch: int, lr_scale: float | None) -> None:
    """The optimizer steps of one epoch, from the resume position: LR, step, logs, and
    mid-epoch checkpoints."""
    cfg, state = ctx.cfg, ctx.state
    # Fixed per run when elastic: the accumulation makes up for a smaller world size.
    accum, global_batch = ctx.grad_accum_steps, ctx.global_batch_size
    batches = iter(ctx.stream.epoch(epoch, start_step=state.step_in_epoch * accum))
    meter = Meter(ctx.session.device)
    while state.step_in_epoch < ctx.steps_per_epoch:
        lr = learning_rate(
            cfg.optim,
            state.global_step,
            ctx.steps_per_epoch,
            ctx.num_epochs,
            lr_scale,
            global_batch_size=global_batch,
        )
        ctx.strategy.set_lr(lr)
        loss = train_step(ctx, events, [next(batches) for _ in range(accum)])
        state.step_in_epoch, state.global_step = state.step_in_epoch + 1, state.global_step + 1
        state.images_seen += global_batch
        meter.add(loss, global_batch)
        events.fire("after_step", ctx, loss)
        epoch_done = state.step_in_epoch == ctx.steps_per_epoch
        if epoch_done or state.global_step % cfg.train.log_every_steps == 0:
            mean_loss, images_per_s, seconds = meter.read()
            state.train_seconds += seconds
            events.fire("log", ctx, step_metrics(ctx, epoch, lr, mean_loss, images_per_s))
        every = cfg.train.checkpoint_every_steps
        if every and not epoch_done and state.global_step % every == 0:
            events.fire("before_checkpoint", ctx, lr)
            with meter.excluded():
                ctx.session.report(progress_metrics(ctx, epoch), save(ctx, events))
    batches.close()  # stop the loader's worker processes now, not at garbage collection


def train_step(ctx: Context, events: Events, micro_batches: list) -> torch.Tensor:
    """Forward/backward every micro-batch, then one optimizer step (masks, prune/grow)."""
    strategy, device = ctx.strategy, ctx.session.device
    channels_last = ctx.fast_path and ctx.cfg.train.channels_last
    total = torch.zeros((), device=device)
    events.fire("step_start", ctx)
    elastic = ctx.stream.elastic_batch is not None  # a fixed global batch
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        images = prepare_images(images, device, strategy.input_dtype, channels_last)
        with strategy.micro_batch(last), running_stats_kept(strategy.module, elastic and index > 0):
            loss = ctx.criterion(strategy.model(images).float(), labels.to(device))
            strategy.backward(loss, last)
        total += loss.detach()
    events.fire("before_optimizer_step", ctx)  # DynamicSparseTraining masks the gradients
    strategy.optimizer_step()
    events.fire("after_optimizer_step", ctx)  # DynamicSparseTraining: masks, prune and grow
    if strategy.cut_pending():  # channels were removed: train the network without them
        replace_model(ctx, events, strategy.shrunk())
    return total / len(micro_batches)


def end_epoch(ctx: Context, events: Events, epoch: int, actions) -> None:
    """The subscribers' epoch end (guard, validation, tickets, exploration), then the
    epoch's metrics, a checkpoint when due, and the report to the session."""
    sync_buffers_(ctx.strategy.module)
    metrics = progress_metrics(ctx, epoch + 1)
    events.fire("epoch_end", ctx, epoch, actions, metrics)
    ctx.state.epoch, ctx.state.step_in_epoch = epoch + 1, 0
    events.fire("log", ctx, metrics)
    every, last_epoch = ctx.cfg.train.checkpoint_every_epochs, epoch == ctx.num_epochs - 1
    saved = save(ctx, events) if last_epoch or (epoch + 1) % every == 0 else None
    ctx.session.report(metrics, saved)


def finish(ctx: Context, events: Events) -> dict[str, Any]:
    """Final metrics and RUN_DIR/summary.json."""
    cfg, state = ctx.cfg, ctx.state
    sync_buffers_(ctx.strategy.module)
    metrics: dict[str, float] = {}
    for split in (cfg.data.val_split, cfg.data.test_split):
        if split:
            metrics.update(evaluate(ctx, split))
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
        **sparse_totals(ctx.strategy),
    }
    if ctx.session.rank == 0:
        write_text_atomic(summary_path(ctx.run), json.dumps(summary, indent=2) + "\n")
    events.fire("finish", ctx, summary)
    return summary


def replace_model(ctx: Context, events: Events, strategy: Strategy) -> None:
    """Swap in a strategy holding a new model (same step, every rank; a shrunk strategy
    may be the same object, rebuilt) and tell the subscribers, so that nothing keeps the
    old model."""
    old, ctx.strategy = ctx.strategy, strategy
    events.fire("model_replaced", ctx, old)


# --------------------------------------------------------------------------- checkpoints
def checkpoint_states(ctx: Context) -> TrainStates:
    """Every resumable object of the run, in restore order (SPEC §9)."""
    replicated, per_rank = ctx.strategy.checkpoint_states()
    return TrainStates(
        replicated={**replicated, "loop": ctx.state, "tickets": ctx.tickets},
        per_rank={**per_rank, "rng": RNGState()},
        sharded=ctx.strategy.sharded_states(),
    )


def save(ctx: Context, events: Events) -> str:
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
    events.fire("checkpoint", ctx, str(path))
    return str(path)


def run_meta(ctx: Context) -> dict[str, Any]:
    """What wrote a checkpoint; a resume must match it (checkpoint.check_compatible)."""
    cfg = ctx.cfg
    meta = {
        **model_facts(cfg),
        **strategy_entry(cfg.train.strategy).checkpoint_meta(cfg.train),
        "world_size": ctx.session.world_size,
        **ctx.definition,
    }
    if cfg.train.elastic or cfg.train.global_batch_size is not None:
        meta["elastic_lanes"] = max(1, cfg.data.loader_workers)  # the epoch's layout
    return meta


# --------------------------------------------------------------------------- metrics
def step_metrics(
    ctx: Context, epoch: int, lr: float, loss: torch.Tensor, rate: float
) -> dict[str, Any]:
    """The loss averaged over ranks, LR, throughput, FLOPs so far and the masks' statistics."""
    if is_distributed():
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    state = ctx.state
    return {
        "epoch": epoch + state.step_in_epoch / ctx.steps_per_epoch,
        "train/loss": float(loss),
        "train/lr": lr,
        "train/images_per_s": rate,
        "train/flops": flops_per_example_so_far(ctx) * state.images_seen,
        **ctx.strategy.sparsity.stats(),
    }


def progress_metrics(ctx: Context, epoch: float) -> dict[str, float]:
    return {
        "epoch": float(epoch),
        "train/flops": flops_per_example_so_far(ctx) * ctx.state.images_seen,
    }
