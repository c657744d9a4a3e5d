"""What the per-worker loop needs from whoever runs it: ranks, a device, reporting, resume.

The loop talks only to a `Session`, so the same code runs in one process, under
torchrun-style env vars (`LocalSession`) and inside Ray Train (`RaySession`, worker.py).
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist

from ft_dist.layout import checkpoint_dirs, checkpoints_dir


@runtime_checkable
class Session(Protocol):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Publish metrics (and a checkpoint already written to ``checkpoint_dir``)."""

    def latest_checkpoint_dir(self) -> str | None:
        """The checkpoint to resume from, or None for a fresh start."""


def latest_complete_checkpoint(run: str | Path) -> str | None:
    """Newest RUN_DIR/checkpoints/<step> directory (temp dirs of torn writes are ignored)."""
    steps = checkpoint_dirs(checkpoints_dir(Path(run)))
    return str(steps[-1]) if steps else None


class LocalSession:
    """No Ray: one process, or one of N processes started with RANK / WORLD_SIZE /
    LOCAL_RANK / MASTER_ADDR / MASTER_PORT set (torchrun, torch.multiprocessing).

    Joins (and later leaves) the default process group when WORLD_SIZE > 1 and none exists:
    gloo on CPU, nccl on CUDA. Resumes from the newest checkpoint under ``run``.
    """

    def __init__(self, run: str | Path, device: str | torch.device | None = None) -> None:
        self.run = Path(run)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.reports: list[dict] = []
        self._owns_group = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, rank=self.rank, world_size=self.world_size, timeout=timedelta(minutes=10)
            )
            self._owns_group = True

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append({**metrics, "checkpoint_dir": checkpoint_dir})

    def latest_checkpoint_dir(self) -> str | None:
        return latest_complete_checkpoint(self.run)

    def close(self, *, synchronize: bool = True) -> None:
        """Leave the process group this session created (no-op otherwise): first free the
        objects that still reference it (a DDP reducer in a reference cycle would otherwise
        be destroyed during interpreter shutdown, with the group's threads still running,
        and abort the process), then wait for every rank (``synchronize``: not after an
        error, when other ranks may never arrive), then destroy it."""
        if self._owns_group and dist.is_initialized():
            gc.collect()
            if synchronize:
                dist.barrier()
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(synchronize=exc_type is None)
