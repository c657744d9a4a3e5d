"""Atomic, safe checkpoints of everything that changes training (SPEC §9), and tickets.

A checkpoint is a directory ``checkpoints/<step>/`` holding

    state.pt        rank 0: model, optimizer, masks and DST schedule, LR/EDST/loop state
    rank_<r>.pt     every rank: its RNG states and, under ZeRO, its optimizer partition
    .metadata, __<r>_0.distcp   FSDP2: model, optimizer and DST state as DTensor shards,
                    written by every rank with torch.distributed.checkpoint (resharded on load)
    meta.json       what wrote it (model, density, world size) for humans and for checks
    index.json      written last: byte size and sha256 of every other file

All ranks write into ``.tmp-<step>/``; rank 0 renames it to ``<step>`` only after every
rank has finished, so a crash mid-write never leaves a directory that looks complete.
Everything is saved with ``torch.save`` as plain tensors/numbers/strings and read back with
``torch.load(weights_only=True)``: loading a checkpoint cannot execute code.

Loading checks each file it reads against index.json (flipped bytes never load silently).
A checkpoint that fails -- damaged, missing a file, or holding a pickle that is not plain
data -- is skipped with a warning naming it, and the next older complete checkpoint in
the same directory (``train.keep_checkpoints`` keeps them) is tried; all ranks agree on
which one. With none usable, `CheckpointError` says so in one line.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ft_dist import failpoints
from ft_dist.data.manifest import file_sha256
from ft_dist.layout import checkpoint_dir, checkpoint_dirs, checkpoint_step
from ft_dist.train.diskspace import (
    DiskFullError,
    dir_bytes,
    disk_full_message,
    is_disk_full,
    tree_bytes,
)
from ft_dist.utils import error_summary, is_distributed, partial_dir, replace_dir, write_atomic

SHARED_FILE = "state.pt"
META_FILE = "meta.json"
INDEX_FILE = "index.json"
INDEX_FORMAT = "ft_dist.checkpoint/1"
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the sharded state

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the fix."""


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def barrier() -> None:
    if is_distributed():
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
    sharded: dict | None = None,
) -> Path:
    """Write one checkpoint collectively (every rank calls this) and keep the newest ``keep``.

    ``shared`` is only needed on rank 0 (the replicated state); ``local`` is this rank's own;
    ``sharded`` (DTensors, every rank) is written with torch.distributed.checkpoint.
    Returns the final directory (the same path on every rank).
    """
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = partial_dir(final)
    if rank == 0 and shared is None:
        raise ValueError("rank 0 must pass the shared checkpoint state")
    needed = _checkpoint_bytes(root, shared, local)

    def write_files() -> None:
        _save_file(local, tmp / rank_file(rank))
        if sharded:  # collective: each rank writes its own shards, none gathers the model
            dcp.save(sharded, checkpoint_id=tmp)
        if rank == 0:
            _save_file(shared, tmp / SHARED_FILE)
            (tmp / META_FILE).write_text(json.dumps({**meta, "step": step}, indent=2) + "\n")
            failpoints.stall("checkpoint-write", step=step, directory=str(tmp))

    def publish() -> None:
        _write_index(tmp)  # last: it vouches for every file already there
        replace_dir(tmp, final)
        _prune(root, keep)

    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    # A full disk on any rank is every rank's error (all stop together, none retries).
    problem = _first_problem_on_any_rank(_disk_problem(write_files, tmp, needed))
    if problem is None and rank == 0:
        problem = _disk_problem(publish, tmp, needed)
    problem = _first_problem_on_any_rank(problem)  # also the barrier after publishing
    if problem is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        raise DiskFullError(problem)
    if rank == 0:
        failpoints.stall("checkpoint-saved", step=step, directory=str(final))
    return final


def _checkpoint_bytes(root: Path, shared: dict | None, local: dict) -> int:
    """About what one checkpoint takes: the newest one on disk, else this rank's state."""
    newest = _newest_complete(root)
    if newest is not None:
        return dir_bytes(newest)
    return tree_bytes(shared) + tree_bytes(local)


def _disk_problem(write: Callable[[], None], tmp: Path, needed: int) -> str | None:
    """Run ``write``; a full disk becomes a one-line message, other errors propagate."""
    try:
        write()
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error, tmp, needed):
            raise
        newest = _newest_complete(tmp.parent)
        kept = f"the previous checkpoint {newest} is kept" if newest else ""
        fix = (
            "free space there, lower train.keep_checkpoints, or set train.output_dir to a "
            "bigger disk"
        )
        return disk_full_message(tmp.parent, needed, "checkpoint", fix, kept)
    return None


def _newest_complete(root: Path) -> Path | None:
    steps = checkpoint_dirs(root)
    return steps[-1] if steps else None


def load_checkpoint(path: str | Path, rank: int) -> tuple[dict, dict | None]:
    """(shared state, this rank's state or None when the checkpoint has no file for it).

    Collective when a process group is up (every rank calls it). Falls back from a damaged
    ``path`` to the next older complete sibling ``<step>`` dir, warning with the reason.
    """
    _, shared, local = load_newest_usable(path, rank)
    return shared, local


def load_newest_usable(path: str | Path, rank: int) -> tuple[Path, dict, dict | None]:
    """`load_checkpoint`, also saying which checkpoint was loaded: ``path``, or the older
    sibling it fell back to."""
    path = Path(path)
    problems: list[str] = []
    for candidate in _candidates(path):
        try:
            loaded, problem = _load_verified(candidate, rank), None
        except CheckpointError as error:
            loaded, problem = None, str(error)
        problem = _first_problem_on_any_rank(problem)
        if problem is None:
            return candidate, *loaded
        problems.append(problem)
        if rank == 0:
            log.warning("skipping checkpoint: %s; trying the previous complete one", problem)
    older = f" (and the {len(problems) - 1} older one(s) beside it)" if len(problems) > 1 else ""
    run = path.parent.parent if checkpoint_step(path) is not None else path
    raise CheckpointError(
        f"no usable checkpoint to resume from: {problems[0]}{older}; start afresh with a new "
        f"train.run_name, or move {run} away to reuse its name"
    )


def _candidates(path: Path) -> list[Path]:
    """``path``, then the older ``<step>`` dirs beside it, newest first."""
    step = checkpoint_step(path)
    if step is None:
        return [path]
    older = [p for p in checkpoint_dirs(path.parent) if checkpoint_step(p) < step]
    return [path, *reversed(older)]


def _load_verified(path: Path, rank: int) -> tuple[dict, dict | None]:
    """Load state.pt and this rank's file, each checked against index.json when present
    (checkpoints written before index.json existed load unchecked)."""
    if not (path / SHARED_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a complete ft_dist checkpoint ({SHARED_FILE} missing)"
        )
    index = _read_index(path)
    local_path = path / rank_file(rank)
    shared = _load_file(path / SHARED_FILE, index)
    local = _load_file(local_path, index) if local_path.is_file() else None
    for name in sorted(index or {}):  # torch.distributed.checkpoint's files, if any
        if name == DCP_METADATA or name.endswith(".distcp"):
            _verify_file(path / name, index)
    return shared, local


def load_sharded(path: str | Path, templates: dict) -> None:
    """Fill ``templates`` (this world size's DTensors) from the checkpoint's sharded state,
    resharding as needed (collective). The files were verified by `load_newest_usable`."""
    path = Path(path)
    if not (path / DCP_METADATA).is_file():
        raise CheckpointError(
            f"{path} holds no sharded state ({DCP_METADATA} missing): it was written by "
            "another train.strategy; resume with that strategy"
        )
    dcp.load(templates, checkpoint_id=path)


def _verify_file(path: Path, index: dict[str, dict]) -> None:
    expected = index[path.name]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {INDEX_FILE})")
    if path.stat().st_size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
        raise CheckpointError(
            f"{path} does not match its sha256 in {INDEX_FILE} (damaged or changed after "
            "it was written)"
        )


def _load_file(path: Path, index: dict[str, dict] | None) -> Any:
    if index is not None:
        expected = index.get(path.name)
        if expected is None:
            raise CheckpointError(f"{path} is not listed in {INDEX_FILE} (added after the save)")
        size = path.stat().st_size
        if size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
            raise CheckpointError(
                f"{path} does not match its sha256 in {INDEX_FILE} (damaged or changed after "
                "it was written)"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():  # torch: a pickled object
            raise CheckpointError(f"{path} cannot be read (not a torch.save file)") from None
        raise CheckpointError(
            f"{path} is not a trusted ft_dist checkpoint: it holds objects other than "
            "tensors, numbers and strings, so it was not loaded (loading could run code)"
        ) from None
    except Exception as error:  # torch raises RuntimeError, UnicodeDecodeError, EOFError...
        raise CheckpointError(f"{path} cannot be read ({error_summary(error)})") from None


def _read_index(path: Path) -> dict[str, dict] | None:
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        return None
    try:
        raw = json.loads(index_path.read_text())
        files = raw["files"] if raw.get("format") == INDEX_FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        files = None
    if not isinstance(files, dict):
        raise CheckpointError(f"{index_path} is damaged (not an ft_dist checkpoint index)")
    return files


def _write_index(directory: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != INDEX_FILE
    }
    content = json.dumps({"format": INDEX_FORMAT, "files": files}, indent=1) + "\n"
    (directory / INDEX_FILE).write_text(content)


def _first_problem_on_any_rank(problem: str | None) -> str | None:
    """Every rank must resume from the same checkpoint: one rank's problem is everyone's."""
    if not is_distributed():
        return problem
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p is not None), None)


def check_compatible(saved: dict, current: dict, path: str | Path) -> None:
    """Refuse a checkpoint written for another model, density or partition layout."""
    keys = ("model", "num_classes", "density", "sparse_init", "strategy", "zero_stage")
    keys += ("model_kwargs", "model_source_sha256")  # same builder arguments, same builder file
    if current.get("per_rank_partitions"):
        keys += ("world_size",)  # the strategy's state is laid out per rank (ZeRO-1/2)
    # A key an older checkpoint lacks reads as empty.
    differ = {
        k: (saved.get(k), current.get(k))
        for k in keys
        if (saved.get(k) or None) != (current.get(k) or None)
    }
    lanes = saved.get("elastic_lanes"), current.get("elastic_lanes")
    if lanes[0] is not None and lanes[1] is not None and lanes[0] != lanes[1]:
        raise ValueError(
            f"checkpoint {path} was written with data.loader_workers={lanes[0]} (a fixed "
            "global batch lays each epoch out in lanes per loader worker, so that each sample "
            f"is read once across a resize); resume with data.loader_workers={lanes[0]}"
        )
    if differ:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"checkpoint {path} does not belong to this run ({details}); use the run's own "
            "config, or a new train.run_name / train.output_dir to start fresh"
        )


def _save_file(obj: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _prune(root: Path, keep: int) -> None:
    for stale in checkpoint_dirs(root)[:-keep]:
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
    try:
        _save_file(ticket, path)
    except (OSError, RuntimeError) as error:
        needed = tree_bytes(ticket)
        if not is_disk_full(error, path.parent, needed):
            raise
        fix = "free space there (the checkpoints beside it hold the run) and re-run to resume"
        raise DiskFullError(disk_full_message(path, needed, "ticket", fix)) from None
    return True
