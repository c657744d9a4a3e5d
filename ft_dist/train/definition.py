"""What defines a run, recorded at its first start and checked on every resume.

    settled = settle_resume(cfg, run, world_size, checkpoint, allow_change=["optim.lr"])
    cfg = settled.cfg  # the global batch kept across a change of the number of workers

A run's *definition* is the config values that decide what it trains, as flat dotted keys
(`run_definition`): the model, the data and its order, sparsity, optimizer and LR schedule,
the epochs the run trains, the ensemble method, the seeds, and the global batch (as trained:
``train.global_batch_size`` holds the examples per optimizer step even where the config left
it unset). Everything else is operational and may change between starts (`OPERATIONAL`:
paths, loader processes, precision-free speed switches, checkpoint and log cadence, the
number of workers, the ``ray`` and ``tracking`` sections).

RUN_DIR/definition.json holds the definition and every change accepted since
(``--allow-change KEY`` of `ft-dist train`); each checkpoint's meta.json carries the same,
so a checkpoint copied elsewhere still knows its run. On a resume (a checkpoint exists):

* a different number of workers keeps the recorded global batch: an unset
  ``train.global_batch_size`` is set to it, and the accumulation makes up for the workers
  (`setup.batch_arithmetic`: it must divide, else a one-line refusal). A strategy whose
  checkpoint is partitioned per rank (ZeRO > 0) refuses another world size in one line;
* any other difference is refused in one line naming the run and each key ``old -> new``,
  unless every differing key is allowed; an allowed change is recorded, so a later resume
  with the same values needs no flag.

The driver (`ft-dist train`, `worker.fit`) settles before any Ray worker starts; the loop
settles again on every rank (in-process and torchrun runs have no driver).
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ft_dist.config import RunConfig
from ft_dist.layout import definition_path
from ft_dist.train.methods import ensemble_method
from ft_dist.train.strategies import strategy_entry
from ft_dist.utils import write_text_atomic

DEFINITION_FORMAT = "ft_dist.definition/1"
GLOBAL_BATCH = "train.global_batch_size"
CHANGES_META = "definition_changes"  # beside "definition" in a checkpoint's meta.json

# Config keys that never block a resume (a section name covers all of its keys).
OPERATIONAL = frozenset(
    {
        "ray",
        "tracking",
        # where things are, and how they are read: the same samples either way
        "data.root",
        "data.loader_workers",  # a fixed global batch checks it apart (checkpoint lanes)
        "data.prefetch_factor",
        "data.loader_start_method",
        "data.pin_memory",
        "data.decode_device",
        "data.verify",
        "data.skip_corrupt",
        "data.eval_batch_size",
        "model.source",  # the builder file's text: model.source_sha256 stands for it
        "sparsity.check_consistency",
        "train.channels_last",
        # the number of workers: the global batch below is what the run trains with
        "train.num_workers",
        "train.min_workers",
        "train.grad_accum_steps",
        "train.checkpoint_every_epochs",
        "train.checkpoint_every_steps",
        "train.keep_checkpoints",
        "train.log_every_steps",
        "train.run_name",  # the run directory itself
        "train.output_dir",
        "ensemble.dst_ensemble",
    }
)


class ResumeRefused(ValueError):
    """A resume that would train another run than the one recorded (one line: the run, the
    keys, the fix)."""


@dataclass
class Settled:
    """The config to train with, the record to keep in checkpoints, and lines for the user."""

    cfg: RunConfig
    record: dict[str, Any]  # {"definition": {...}, "changes": [...]}
    notes: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """What every checkpoint of the run records of it."""
        return {"definition": self.record["definition"], CHANGES_META: self.record["changes"]}


def run_definition(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The dotted keys that define the run at ``world_size`` workers, JSON values."""
    from ft_dist.train.setup import batch_arithmetic  # torch: only when a run settles

    flat: dict[str, Any] = {}
    _flatten(cfg, "", flat)
    flat["train.epochs"] = cfg.num_epochs  # the epochs trained (EDST: from its phases)
    _, flat[GLOBAL_BATCH] = batch_arithmetic(cfg.train, cfg.data.batch_size_per_worker, world_size)
    if cfg.model.source is not None:
        from ft_dist.models.builders import source_sha256

        flat["model.source_sha256"] = source_sha256(cfg.model.source)
    if ensemble_method(cfg.ensemble.method).separate_runs:
        del flat["ensemble.num_members"]  # a DST Ensemble member trains the same with more
    return json.loads(json.dumps(flat))


def _flatten(section: BaseModel, prefix: str, out: dict[str, Any]) -> None:
    values = section.model_dump(mode="json")
    for name in type(section).model_fields:
        key = f"{prefix}{name}"
        if _operational(key):
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            _flatten(value, f"{key}.", out)
        else:
            out[key] = values[name]


def _operational(key: str) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in OPERATIONAL for n in range(1, len(parts) + 1))


def read_record(run: Path) -> dict[str, Any] | None:
    """RUN_DIR/definition.json, or None when absent or not readable as one."""
    try:
        raw = json.loads(definition_path(run).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != DEFINITION_FORMAT:
        return None
    return {"definition": raw.get("definition", {}), "changes": raw.get("changes", [])}


def write_record(run: Path, record: dict[str, Any]) -> None:
    content = {"format": DEFINITION_FORMAT, **record}
    definition_path(run).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(definition_path(run), json.dumps(content, indent=1) + "\n")


def checkpoint_meta(checkpoint: str | Path | None) -> dict[str, Any]:
    """A checkpoint's meta.json ({} when unreadable: the verified load decides later)."""
    from ft_dist.train.checkpoint import META_FILE

    if checkpoint is None:
        return {}
    try:
        meta = json.loads((Path(checkpoint) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def settle_resume(
    cfg: RunConfig,
    run: Path,
    world_size: int,
    checkpoint: str | Path | None,
    allow_change: Iterable[str] = (),
    *,
    write: bool = True,
) -> Settled:
    """Check a start of ``run`` against its record and return what to train with.

    ``checkpoint``: the one the run resumes from (None: a fresh start, whose definition
    becomes the record). ``write``: keep the record (the driver, or rank 0 of the loop).
    Raises `ResumeRefused` (a ValueError: never retried) with one line.
    """
    allowed = set(allow_change)
    current = run_definition(cfg, world_size)
    unknown = sorted(allowed - current.keys())
    if unknown:
        raise ResumeRefused(_unknown_keys(unknown, current))
    if checkpoint is None:
        record = {"definition": current, "changes": []}
        if write:
            write_record(run, record)
        return Settled(cfg, record)
    meta = checkpoint_meta(checkpoint)
    _check_world_size(cfg, run, meta, world_size)
    record = read_record(run)
    if record is None and isinstance(meta.get("definition"), dict):
        record = {"definition": meta["definition"], "changes": meta.get(CHANGES_META, [])}
    if record is None:  # a checkpoint of a version that recorded no definition
        record = {"definition": current, "changes": []}
        if write:
            write_record(run, record)
        return Settled(cfg, record)
    old = record["definition"]
    notes: list[str] = []
    cannot_keep = None  # why this world size cannot make up the run's global batch
    if cfg.train.global_batch_size is None and GLOBAL_BATCH not in allowed:
        kept = old.get(GLOBAL_BATCH)
        if isinstance(kept, int) and kept != current[GLOBAL_BATCH]:
            cannot_keep = _cannot_keep(cfg, run, world_size, kept, meta)
            if cannot_keep is None:
                train = cfg.train.model_copy(update={"global_batch_size": kept})
                cfg = cfg.model_copy(update={"train": train})
                notes.append(
                    f"{run}: keeping the run's global batch of {kept} on {world_size} "
                    f"worker(s) (train.global_batch_size={kept}; it was written on "
                    f"{meta.get('world_size', '?')}): the accumulation makes up for the workers"
                )
            current = {**current, GLOBAL_BATCH: kept}
    differ = {
        key: (old[key], current[key])
        for key in sorted(old.keys() & current.keys())
        if old[key] != current[key]
    }
    refused = [key for key in differ if key not in allowed]
    if refused:  # the keys first: a changed batch per worker explains a batch that cannot divide
        raise ResumeRefused(_refusal(run, meta, {k: differ[k] for k in refused}))
    if cannot_keep is not None:
        raise ResumeRefused(cannot_keep)
    if differ:
        step = meta.get("step")
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        changes = [
            {"key": key, "old": a, "new": b, "from_step": step, "at": when}
            for key, (a, b) in differ.items()
        ]
        record = {"definition": current, "changes": [*record["changes"], *changes]}
        if write:
            write_record(run, record)
        notes.append(
            f"{run}: resuming with changed "
            + ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in differ.items())
            + f" (allowed; recorded in {definition_path(run)})"
        )
    else:
        record = {"definition": current, "changes": record["changes"]}
    return Settled(cfg, record, notes)


def settle_on_driver(cfg: RunConfig, allow_change: Iterable[str] = ()) -> RunConfig:
    """`settle_resume` before any worker starts, against the newest checkpoint in RUN_DIR;
    prints its notes. A fresh start is recorded by the loop (its rank 0), not here: the
    workers may still resume from Ray's copy of a checkpoint (RUN_DIR lost)."""
    from ft_dist.layout import run_dir
    from ft_dist.train.session import latest_complete_checkpoint

    run = run_dir(cfg.train)
    checkpoint = latest_complete_checkpoint(run)
    world_size = cfg.train.num_workers
    settled = settle_resume(
        cfg, run, world_size, checkpoint, allow_change, write=checkpoint is not None
    )
    for note in settled.notes:
        print(f"ft-dist: {note}", file=sys.stderr, flush=True)
    return settled.cfg


def _cannot_keep(
    cfg: RunConfig, run: Path, world_size: int, kept: int, meta: dict[str, Any]
) -> str | None:
    """Why ``world_size`` workers cannot make up the run's global batch by accumulation
    (`setup.batch_arithmetic`), or None when they can."""
    per_micro_step = cfg.data.batch_size_per_worker * world_size
    if kept % per_micro_step == 0:
        return None
    return (
        f"cannot resume {run} on {world_size} worker(s) with its global batch of {kept} "
        f"(written on {meta.get('world_size', '?')}): {kept} is not a multiple of "
        f"data.batch_size_per_worker={cfg.data.batch_size_per_worker} x {world_size} "
        f"workers = {per_micro_step}; choose train.num_workers so that it divides"
    )


def _check_world_size(cfg: RunConfig, run: Path, meta: dict[str, Any], world_size: int) -> None:
    saved = meta.get("world_size")
    if not meta.get("per_rank_partitions") or saved in (None, world_size):
        return
    entry = strategy_entry(meta.get("strategy") or cfg.train.strategy)
    raise ResumeRefused(
        f"cannot resume {run} on {world_size} worker(s): its checkpoint (step "
        f"{meta.get('step', '?')}) was written on {saved} by train.strategy="
        f"{meta.get('strategy')} with train.zero_stage={meta.get('zero_stage')}, whose state is "
        f"partitioned per rank (the strategy {entry.world_size_rule}); resume with "
        f"train.num_workers={saved}"
    )


def _refusal(run: Path, meta: dict[str, Any], differ: dict[str, tuple[Any, Any]]) -> str:
    changes = ", ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, (a, b) in differ.items())
    flags = " ".join(f"--allow-change {key}" for key in differ)
    return (
        f"{run} (checkpoint step {meta.get('step', '?')}) was started with other values: "
        f"{changes}; resume with the run's own values, pass {flags} to `ft-dist train` to "
        "change them (recorded in the run), or start afresh with a new train.run_name"
    )


def _unknown_keys(unknown: list[str], current: dict[str, Any]) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, current, n=1)
        if _operational(key):
            hints.append(f"{key} (operational: it never blocks a resume)")
        else:
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return (
        f"--allow-change {', '.join(hints)}: not a key that defines a run (those that do: "
        "model, data, sparsity, optim, the schedule and epochs, the ensemble method, the "
        f"seeds and {GLOBAL_BATCH}); drop the flag or fix the key"
    )


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
