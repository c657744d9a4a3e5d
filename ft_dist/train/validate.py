"""Exact accuracy and NLL of one split, evaluated across all ranks of a member.

The evaluation stream hands every sample to exactly one rank, so per-rank sums of correct
predictions and log-losses, all-reduced, give exact metrics with nothing padded or dropped.
Ranks may see different numbers of batches: evaluate the bare module, never the DDP
wrapper (whose forward would wait for the other ranks). A sharded model (FSDP2) has no bare
module: its every forward all-gathers parameters, so with ``collective=True`` every rank runs
as many forwards as the rank with the most batches (one-sample dummies, not counted).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional

from ft_dist.data import DataConfig, DataInfo
from ft_dist.data.evaluation import EvalStream
from ft_dist.utils import is_distributed


def sync_buffers_(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift per rank)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def running_stats_kept(module: nn.Module, keep: bool) -> Iterator[None]:
    """With ``keep``, BatchNorm running statistics leave the block as they entered it.

    A fixed global batch (elastic runs) trains alike on any number of ranks only if the
    statistics do too. Under DDP every rank takes rank 0's buffers, so they follow the
    step's first micro-batch column; one rank accumulating several columns would update
    them once per column. Keeping them through the step's later micro-batches makes them
    follow column 0 at every world size.
    """
    if not keep:
        yield
        return
    saved = [
        (buffer, buffer.clone())
        for layer in module.modules()
        if getattr(layer, "track_running_stats", False)  # BatchNorm, InstanceNorm
        for buffer in layer.buffers(recurse=False)
    ]
    yield
    with torch.no_grad():
        for buffer, value in saved:
            buffer.copy_(value)


def prepare_images(
    images: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(dtype)


@torch.no_grad()
def evaluate_split(
    module: nn.Module,
    data: DataConfig,
    split: str,
    *,
    info: DataInfo,
    rank: int,
    world_size: int,
    device: torch.device,
    input_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    collective: bool = False,
) -> dict[str, float]:
    """``{split}/accuracy`` and ``{split}/nll`` over the whole split (same on every rank).
    ``collective``: the module's forward is collective (FSDP2), run equal counts."""
    stream = EvalStream(data, split=split, rank=rank, world_size=world_size, info=info)
    was_training = module.training
    module.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, nll, count
    batches = equal_batches(stream, module, device) if collective else stream
    for images, labels, _ in batches:
        logits = module(prepare_images(images, device, input_dtype, channels_last)).float()
        labels = labels.to(device)
        sums[0] += (logits.argmax(dim=1) == labels).sum()
        sums[1] += functional.cross_entropy(logits, labels, reduction="sum").double()
        sums[2] += labels.numel()
    module.train(was_training)
    if is_distributed():
        dist.all_reduce(sums)
    correct, nll, count = sums.tolist()
    if int(count) != stream.num_samples:
        raise RuntimeError(f"evaluated {int(count)} of the {stream.num_samples} {split} samples")
    return {f"{split}/accuracy": correct / count, f"{split}/nll": nll / count}


def equal_batches(stream, module: nn.Module, device: torch.device):
    """``stream``'s batches, then dummy forwards until every rank's stream is done: each
    step all-reduces (has a batch, its image shape) so all ranks agree when to stop, and a
    rank with no batch left runs ``module`` on one zero image of a shape some rank has."""
    batches = iter(stream)
    while True:
        batch = next(batches, None)
        shape = [1, *batch[0].shape[1:]] if batch is not None else [0, 0, 0, 0]
        flags = torch.tensor(shape, dtype=torch.int64, device=device)
        if is_distributed():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if int(flags[0]) == 0:
            return
        if batch is not None:
            yield batch
        else:  # an FSDP2 forward is collective: join the others', discard the result
            module(torch.zeros(flags[1:].tolist(), device=device).unsqueeze(0))
