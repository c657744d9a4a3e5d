"""Everything resumable, as one registry of stateful objects handed to the checkpointer.

    states = TrainStates(replicated={"model": ..., "sparsity": ..., "loop": ...},
                         per_rank={"rng": RNGState(), ...})
    path = states.save(root, step, meta, rank=rank, keep=2)
    states.load(path, rank=rank, expected_meta=meta)

Each object brings its own ``state_dict()`` / ``load_state_dict()``; save and restore walk
the same dicts in the same order, so they cannot drift apart (torchtitan's ``states=``).
``replicated`` state is equal on every rank and written once by rank 0; ``per_rank`` state
(RNG streams, a ZeRO optimizer partition) is written by every rank; ``sharded`` state
(FSDP2: DTensors) goes through torch.distributed.checkpoint, each rank writing its shards,
and is resharded to the world size that loads it. Sharded state loads first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ft_dist.train import checkpoint as ckpt


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RNGState:
    """This process's Python, NumPy and torch RNG streams (optional: a rank the checkpoint
    has no file for keeps the streams it was seeded with)."""

    optional = True

    def state_dict(self) -> dict[str, Any]:
        return ckpt.capture_rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ckpt.restore_rng_state(state)


@dataclass
class TrainStates:
    replicated: dict[str, Stateful]
    per_rank: dict[str, Stateful] = field(default_factory=dict)
    sharded: dict[str, Stateful] = field(default_factory=dict)

    def save(self, root: str | Path, step: int, meta: dict, *, rank: int, keep: int) -> Path:
        """Write one checkpoint collectively (every rank calls this)."""
        shared = None
        if rank == 0:
            shared = {"meta": meta, **{k: v.state_dict() for k, v in self.replicated.items()}}
        local = {k: v.state_dict() for k, v in self.per_rank.items()}
        sharded = {k: v.state_dict() for k, v in self.sharded.items()}
        return ckpt.save_checkpoint(
            root, step, shared, local, meta, rank=rank, keep=keep, sharded=sharded
        )

    def load(self, path: str | Path, *, rank: int, expected_meta: dict) -> Path:
        """Restore every object from ``path`` (refusing another model, density, layout), or
        from the older checkpoint it falls back to when ``path`` is damaged; returns the
        one restored."""
        path, shared, local = ckpt.load_newest_usable(path, rank)
        ckpt.check_compatible(shared["meta"], expected_meta, path)
        if self.sharded:
            templates = {k: v.state_dict() for k, v in self.sharded.items()}
            ckpt.load_sharded(path, templates)
            for name, obj in self.sharded.items():
                obj.load_state_dict(templates[name])
        for name, obj in self.replicated.items():
            if name in shared or not getattr(obj, "optional", False):
                obj.load_state_dict(shared[name])
        for name, obj in self.per_rank.items():
            if local is not None and name in local:
                obj.load_state_dict(local[name])
            elif not getattr(obj, "optional", False):
                raise ValueError(
                    f"checkpoint {path} has no {name} state for rank {rank}: resume with the "
                    "same train.num_workers it was written with"
                )
        return path
