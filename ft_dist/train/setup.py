"""Everything the loop builds before its first step, in the order that keeps ranks equal.

1. data first: the manifest fixes the model's classes, channels and image size;
2. every rank seeds identically before building the model and the masks, so all replicas
   start equal with no broadcast; per-rank randomness is seeded only afterwards;
3. the strategy wraps the model and attaches DST; FLOPs are priced once on a meta copy.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.config import RunConfig
from ft_dist.data import DataInfo
from ft_dist.data.pipeline import TrainStream
from ft_dist.layout import run_dir
from ft_dist.models import build_model_from_config
from ft_dist.models.builders import source_sha256
from ft_dist.sparse.flops import (
    mean_training_flops_per_example,
    model_forward_flops,
    training_flops_per_example,
)
from ft_dist.train.config import TrainConfig
from ft_dist.train.methods import build_plan, resolve_channel_schedule
from ft_dist.train.methods.base import RunPlan
from ft_dist.train.session import Session
from ft_dist.train.strategies.base import Strategy, build_strategy
from ft_dist.train.tickets import TicketKeeper
from ft_dist.utils import derive_seed


@dataclass
class LoopState:
    """Where the loop is; with the strategy's state, everything a resume needs."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0  # optimizer steps done in the run
    images_seen: int = 0  # training examples, summed over ranks
    train_seconds: float = 0.0  # wall time spent in training steps (not eval/checkpoints)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Context:
    """The pieces the loop's steps share (built once in `train`)."""

    cfg: RunConfig
    session: Session
    tracker: Any
    run: Path
    stream: TrainStream
    info: DataInfo
    strategy: Strategy
    criterion: nn.Module
    tickets: TicketKeeper
    state: LoopState
    plan: RunPlan
    steps_per_epoch: int
    num_epochs: int
    flops_per_example: float
    fast_path: bool  # bf16 / channels_last apply (CUDA only)
    grad_accum_steps: int = 1  # micro-batches per optimizer step at this world size
    global_batch_size: int = 1  # examples per optimizer step, summed over ranks
    # What defines the run and the changes accepted (train/definition.py), for checkpoints.
    definition: dict[str, Any] = field(default_factory=dict)


def batch_arithmetic(
    train: TrainConfig, batch_size_per_worker: int, world_size: int
) -> tuple[int, int]:
    """(micro-batches per step, global batch) at ``world_size``.

    A fixed global batch (train.global_batch_size, or elastic training's max workers ×
    per-worker batch × grad_accum_steps) keeps the LR schedule, DST update period and FLOPs
    accounting equal at every world size: accumulation makes up for missing workers.
    """
    if train.global_batch_size is None and not train.elastic:
        accum = train.grad_accum_steps
        return accum, batch_size_per_worker * accum * world_size
    fixed = train.global_batch_size or (
        train.num_workers * batch_size_per_worker * train.grad_accum_steps
    )
    per_micro_step = batch_size_per_worker * world_size
    if fixed % per_micro_step:
        raise ValueError(
            f"global batch {fixed} is not a multiple of data.batch_size_per_worker="
            f"{batch_size_per_worker} x {world_size} workers = {per_micro_step}: choose "
            "train.global_batch_size (or num_workers, batch_size_per_worker) so that it "
            "divides at every world size the run may have"
        )
    return fixed // per_micro_step, fixed


def build_context(cfg: RunConfig, session: Session, tracker: Any) -> Context:
    """Data stream, resolved config, model, strategy and bookkeeping for one rank."""
    rank, world_size = session.rank, session.world_size
    # 1. Data first: the manifest fixes the model's shape.
    data_seed = derive_seed("data", cfg.data.seed, cfg.train.seed, cfg.train.member)
    accum, global_batch = batch_arithmetic(cfg.train, cfg.data.batch_size_per_worker, world_size)
    fixed = cfg.train.elastic or cfg.train.global_batch_size is not None
    stream = TrainStream(
        cfg.data,
        rank=rank,
        world_size=world_size,
        seed=data_seed,
        global_batch=global_batch if fixed else None,  # a world-size independent order
    )
    model_cfg = cfg.model.resolved(
        num_classes=stream.info.num_classes,
        in_channels=stream.info.in_channels,
        image_size=stream.info.image_size,
    )
    cfg = cfg.model_copy(update={"model": model_cfg})
    steps_per_epoch = stream.steps_per_epoch // accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"{accum} micro-batches per step (train.grad_accum_steps) exceed the "
            f"{stream.steps_per_epoch} batches per epoch; lower it or data.batch_size_per_worker"
        )
    cfg = resolve_channel_schedule(cfg, steps_per_epoch)  # recorded in config.yaml
    run = run_dir(cfg.train)
    plan = build_plan(cfg, steps_per_epoch)
    cuda_only = cfg.train.bf16 or cfg.train.channels_last
    if rank == 0 and session.device.type != "cuda" and cuda_only:
        warnings.warn(
            "train.bf16 / train.channels_last apply on CUDA only: training in fp32 on "
            f"{session.device}",
            stacklevel=2,
        )
    # 2. Identical model and masks on every rank; per-rank randomness only afterwards.
    strategy = build_member(cfg, session, plan, accum)
    torch.manual_seed(derive_seed("rank", cfg.train.seed, cfg.train.member, rank))
    return Context(
        cfg=cfg,
        session=session,
        tracker=tracker,
        run=run,
        stream=stream,
        info=stream.info,
        strategy=strategy,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing),
        tickets=TicketKeeper(run, plan.ticket_choice, model_facts(cfg)),
        state=LoopState(),
        plan=plan,
        steps_per_epoch=steps_per_epoch,
        num_epochs=cfg.num_epochs,
        flops_per_example=training_flops(cfg, strategy),
        fast_path=session.device.type == "cuda",
        grad_accum_steps=accum,
        global_batch_size=global_batch,
    )


def build_member(cfg: RunConfig, session: Session, plan: RunPlan, accum: int) -> Strategy:
    """The model and its masks from seeds of (run seed, member): equal on every rank, and
    different for each member of a DST Ensemble (weights, masks and mask evolution)."""
    member, device = cfg.train.member, session.device
    torch.manual_seed(derive_seed("model", cfg.train.seed, member))
    module = build_model_from_config(cfg.model).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        module = module.to(memory_format=torch.channels_last)
    mask_seed = derive_seed("masks", cfg.sparsity.seed, cfg.train.seed, member)
    return build_strategy(
        module,
        train=cfg.train.model_copy(update={"grad_accum_steps": accum}),
        optim=cfg.optim,
        sparsity=cfg.sparsity.model_copy(update={"seed": mask_seed}),
        micro_batch_size=cfg.data.batch_size_per_worker,
        device=device,
        world_size=session.world_size,
        decay_period=plan.decay_period,
        input_shape=(cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size),
    )


def training_flops(cfg: RunConfig, strategy: Strategy) -> float:
    """SPEC §8 training FLOPs of one example-step under this run's layer densities."""
    dense, sparse = model_forward_flops(cfg.model, strategy.sparsity.layer_densities)
    return training_flops_per_example(
        dense,
        sparse,
        cfg.sparsity.growth,
        strategy.sparsity.schedule.every_steps,
        dynamic=cfg.sparsity.is_dynamic,
    )


def flops_per_example_so_far(ctx: Context) -> float:
    """Training FLOPs of one example-step, averaged over the steps run so far. Under
    channel-level DST each stretch between two removals is priced at its own sparse and
    slim dense forward FLOPs (a removed channel costs nothing, in the dense gradient of
    gradient growth either); otherwise the run's fixed price (`training_flops`)."""
    sparsity = ctx.strategy.sparsity
    channels = sparsity.channels
    if channels is None or not channels.flops_history:
        return ctx.flops_per_example
    cfg = ctx.cfg.sparsity
    price = mean_training_flops_per_example(
        channels.segments(sparsity.num_steps),
        cfg.growth,
        sparsity.schedule.every_steps,
        dynamic=cfg.is_dynamic,
    )
    return ctx.flops_per_example if price is None else price


def model_facts(cfg: RunConfig) -> dict[str, Any]:
    """What a checkpoint or ticket must agree with to be loaded into this run's model."""
    source = cfg.model.source
    return {
        "model": cfg.model.name,
        "model_kwargs": dict(cfg.model.kwargs),
        "model_source_sha256": source_sha256(source) if source is not None else None,
        "num_classes": cfg.model.num_classes,
        "in_channels": cfg.model.in_channels,
        "image_size": cfg.model.image_size,
        "density": cfg.sparsity.density,
        "sparse_init": cfg.sparsity.sparse_init,
        "run_name": cfg.train.run_name,
    }
