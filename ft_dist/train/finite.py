"""Stop a diverged run before it writes anything non-finite (a NaN ticket or checkpoint).

Checking every step would cost a host sync per step, so the loop checks where it already
syncs or is about to write: the averaged loss at each log point (`check_loss`), and every
floating tensor of the model (weights and BatchNorm buffers) before a checkpoint or a
ticket is written (`check_weights`, one sync). A failed check raises `NonFiniteError`, a
ValueError: the CLI prints its one line and Ray is not asked to retry (a restart would
diverge the same way). Nothing non-finite has been written by then, so the newest
checkpoint on disk is the last good one, and re-running the same run name with a lower
LR rolls back to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ft_dist.utils import is_distributed


class NonFiniteError(ValueError):
    """Training produced a NaN/inf loss or weights; the message says where and what to do."""


def weights_finite(module: nn.Module) -> bool:
    """True when every floating tensor of ``module``'s state is finite, on every rank
    (collective when a process group is up: all ranks agree, so all stop together)."""
    # A sharded model's DTensors: this rank's shards (the flag is reduced over ranks below).
    tensors = [
        t.to_local() if isinstance(t, DTensor) else t
        for t in module.state_dict().values()
        if t.is_floating_point()
    ]
    if tensors:
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    else:
        finite = torch.ones((), dtype=torch.bool)
    flag = finite.to(torch.int32)
    if is_distributed():
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def diverged_message(
    what: str,
    *,
    step: int,
    epoch: int,
    lr: float,
    last_checkpoint: str | None,
) -> str:
    """One line: what went non-finite, where, the LR, and the two ways on."""
    if last_checkpoint is None:
        rollback = "no checkpoint was written yet, so re-running starts afresh"
    else:
        rollback = (
            f"to roll back, re-run with the same train.run_name: it resumes from the last "
            f"good checkpoint {last_checkpoint} (or use a new train.run_name to start afresh)"
        )
    return (
        f"training diverged: {what} at step {step} (epoch {epoch + 1}) with lr {lr:.4g}; "
        "no ticket or checkpoint was written from it. Lower optim.lr (or raise "
        f"optim.warmup_epochs); {rollback}"
    )


Where = Callable[[], dict[str, Any]]  # step, epoch, lr, last_checkpoint (read on failure)


def check_loss(loss: float, where: Where) -> None:
    """Raise NonFiniteError when the (already synced) mean training loss is NaN or inf."""
    if not math.isfinite(loss):
        raise NonFiniteError(diverged_message(f"the training loss is {loss}", **where()))


def check_weights(module: nn.Module, before: str, where: Where) -> None:
    """Raise NonFiniteError before ``before`` (e.g. "checkpoint") is written from
    non-finite weights."""
    if not weights_finite(module):
        raise NonFiniteError(
            diverged_message(f"the weights hold NaN/inf before the {before}", **where())
        )
