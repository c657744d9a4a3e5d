"""Atomic, safe checkpoints of everything that changes training (SPEC §9), and tickets.

A checkpoint is a directory ``checkpoints/<step>/`` holding

    state.pt        rank 0: model, optimizer, masks and DST schedule, LR/EDST/loop state
    rank_<r>.pt     every rank: its RNG states and, under ZeRO, its optimizer partition
    meta.json       what wrote it (model, density, world size) for humans and for checks

All ranks write into ``.tmp-<step>/``; rank 0 renames it to ``<step>`` only after every
rank has finished, so a crash mid-write never leaves a directory that looks complete.
Everything is saved with ``torch.save`` as plain tensors/numbers/strings and read back with
``torch.load(weights_only=True)``: loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ft_dist.train.paths import checkpoint_name

SHARED_FILE = "state.pt"
META_FILE = "meta.json"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save_checkpoint(
    root: str | Path,
    step: int,
    shared: dict | None,
    local: dict,
    meta: dict,
    *,
    rank: int,
    keep: int,
) -> Path:
    """Write one checkpoint collectively (every rank calls this) and keep the newest ``keep``.

    ``shared`` is only needed on rank 0 (the replicated state); ``local`` is this rank's own.
    Returns the final directory (the same path on every rank).
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _save_file(local, tmp / rank_file(rank))
    if rank == 0:
        if shared is None:
            raise ValueError("rank 0 must pass the shared checkpoint state")
        _save_file(shared, tmp / SHARED_FILE)
        (tmp / META_FILE).write_text(json.dumps({**meta, "step": step}, indent=2) + "\n")
    barrier()
    if rank == 0:
        _replace_dir(tmp, final)
        _prune(root, keep)
    barrier()
    return final


def load_checkpoint(path: str | Path, rank: int) -> tuple[dict, dict | None]:
    """(shared state, this rank's state or None when the checkpoint has no file for it)."""
    path = Path(path)
    shared_path = path / SHARED_FILE
    if not shared_path.is_file():
        raise FileNotFoundError(
            f"{shared_path} not found: {path} is not a complete ft_dist checkpoint "
            "(delete it to resume from an older one)"
        )
    shared = torch.load(shared_path, map_location="cpu", weights_only=True)
    local_path = path / rank_file(rank)
    local = (
        torch.load(local_path, map_location="cpu", weights_only=True)
        if local_path.is_file()
        else None
    )
    return shared, local


def check_compatible(saved: dict, current: dict, path: str | Path) -> None:
    """Refuse a checkpoint written for another model, density or partition layout."""
    keys = ("model", "num_classes", "density", "sparse_init", "strategy", "zero_stage")
    if current.get("zero_stage"):
        keys += ("world_size",)  # ZeRO partitions are laid out per rank
    differ = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if differ:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"checkpoint {path} does not belong to this run ({details}); use the run's own "
            "config, or a new train.run_name / train.output_dir to start fresh"
        )


def _save_file(obj: dict, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older directory of the same step is set aside first."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    for stale in steps[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as plain tensors/ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            numpy_state["kind"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_plain(value):
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- tickets
def write_ticket(path: str | Path, ticket: dict) -> bool:
    """Save a ticket atomically unless it exists (tickets are never overwritten).

    Returns False when the file was already there: a run resumed from a checkpoint taken
    before its ticket was recorded recomputes the same ticket, so keeping the first is right.
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_file(ticket, path)
    return True
