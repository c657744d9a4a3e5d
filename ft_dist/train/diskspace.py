"""A full disk called a full disk: one line naming the device, the path, the bytes needed
and free, instead of torch's ``[enforce fail at inline_container.cc] unexpected pos``.

`DiskFullError` is a ValueError: retrying a write on a full file system fails the same
way, so Ray's restarts are skipped (worker.USER_ERRORS) and the CLI prints the line.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

MB = 1 << 20
# What torch's zip writer says when a write comes up short (disk full, quota).
_SHORT_WRITE = (
    "unexpected pos",
    "file write failed",
    "pytorchstreamwriter failed writing",
    "iostream error",
)


class DiskFullError(ValueError):
    """No space left where a checkpoint, ticket or Ray's copy is written."""


def existing_parent(path: str | Path) -> Path:
    """``path`` or its nearest ancestor that exists (for space and device questions)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer can still use on the file system holding ``path``."""
    return shutil.disk_usage(existing_parent(path)).free


def device_of(path: str | Path) -> str:
    """``/dev/vdb1 (mounted at /data)`` for the file system holding ``path``, or the mount
    point alone where /proc/self/mounts is not there (not Linux)."""
    mount = existing_parent(path).resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        lines = []
    devices = [line.split()[0] for line in lines if len(line.split()) > 1]
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    for device, point in reversed(list(zip(devices, points, strict=True))):
        if point == str(mount):
            return f"{device} (mounted at {mount})"
    return f"the file system mounted at {mount}"


def tree_bytes(value: object) -> int:
    """Tensor bytes in a nested dict/list state (what torch.save will write, roughly)."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tree_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tree_bytes(v) for v in value)
    return 0


def dir_bytes(path: str | Path) -> int:
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def is_disk_full(error: BaseException, path: str | Path, needed: int) -> bool:
    """ENOSPC / EDQUOT, or torch's short-write error while less than ``needed`` bytes are
    free on ``path``'s file system (its message does not say why the write came up short)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    if "no space left" in text or "disk quota exceeded" in text:
        return True
    return any(s in text for s in _SHORT_WRITE) and free_bytes(path) < max(needed, MB)


def disk_full_message(path: str | Path, needed: int, what: str, fix: str, kept: str = "") -> str:
    """One line: device, path, needed vs free, the fix (and what was kept)."""
    free = free_bytes(path)
    kept = f"; {kept}" if kept else ""
    return (
        f"no space left on {device_of(path)} writing {what} {path} (needs ~{_mb(needed)} MB, "
        f"{_mb(free)} MB free); {fix}{kept}"
    )


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / MB:,.0f}" if num_bytes >= 10 * MB else f"{num_bytes / MB:.1f}"


# --------------------------------------------------------------------------- preflight
def run_bytes(cfg: Any, model: torch.nn.Module) -> tuple[int, int]:
    """(one checkpoint, one ticket) in bytes, estimated from the model's size: fp32 weights
    and buffers, optimizer slots (momentum; AdamW two), DeepSpeed's fp32 masters, a bool
    mask per weight and the best-so-far ticket candidate; a ticket is weights + masks."""
    from ft_dist.train.methods import build_plan
    from ft_dist.train.optimizers import optimizer_entry
    from ft_dist.train.strategies import strategy_entry

    params = sum(p.numel() for p in model.parameters())
    weights = 4 * (params + sum(b.numel() for b in model.buffers()))
    masks = params if cfg.sparsity.density < 1.0 else 0
    slots = len(optimizer_entry(cfg.optim.name).state_keys(cfg.optim))
    checkpoint = weights + 4 * params * slots + masks
    if strategy_entry(cfg.train.strategy).fp32_masters:
        checkpoint += 4 * params
    if build_plan(cfg, steps_per_epoch=1).ticket_choice == "best":  # best-so-far candidate
        checkpoint += weights + masks
    return checkpoint, weights + masks


def disk_space_problems(cfg: Any, model: torch.nn.Module) -> list[str]:
    """Where the run would run out of space, as one-line messages (none: room enough).

    The run directory holds up to train.keep_checkpoints + 1 checkpoints (the newest is
    written before the oldest goes) and every ticket; checkpoints and tickets already there
    count as written. Ray's copies cost nothing on the same file system (hard links), and
    keep_checkpoints + 1 copies on another one. A DST Ensemble has a run per member.
    """
    from ft_dist.layout import checkpoint_dirs, checkpoints_dir, run_dir, run_tickets
    from ft_dist.train.methods import ensemble_method, method_epochs

    checkpoint, ticket = run_bytes(cfg, model)
    epochs = method_epochs(cfg)
    separate = ensemble_method(cfg.ensemble.method).separate_runs
    members = epochs.members if separate else 1  # runs, each with its own checkpoints
    tickets = 1 if separate else epochs.members  # tickets per run
    slots = cfg.train.keep_checkpoints + 1
    run = run_dir(cfg.train)
    written = checkpoint_dirs(checkpoints_dir(run))
    need_run = members * (
        max(slots - len(written), 1) * checkpoint + max(tickets - len(run_tickets(run)), 0) * ticket
    )
    places = [("train.output_dir", run, need_run)]
    storage = cfg.ray.storage_path
    if storage and ("://" not in storage or storage.startswith("file://")):
        path = Path(storage.removeprefix("file://"))
        if existing_parent(path).stat().st_dev != existing_parent(run).stat().st_dev:
            places.append(("ray.storage_path", path, members * slots * checkpoint))
    problems = []
    for key, path, need in places:
        free = free_bytes(path)
        if free < need:
            problems.append(
                f"{key}: {device_of(path)} has {_mb(free)} MB free at {path}, the run needs "
                f"~{_mb(need)} MB (train.keep_checkpoints={cfg.train.keep_checkpoints} + 1 "
                f"checkpoints of ~{_mb(checkpoint)} MB and {tickets * members} ticket(s) of "
                f"~{_mb(ticket)} MB); free space, lower train.keep_checkpoints, or set {key} "
                "to a bigger disk"
            )
    return problems
