"""Which weights become a member's ticket, and writing it (the tickets/ contract).

EDST (SPEC §5) keeps, inside each refinement phase, the epoch with the best validation
accuracy (or simply the phase's last epoch) and writes it as ``ticket_<phase>.pt`` when
the phase ends. The best-so-far candidate is part of the checkpoint, so a run resumed in
the middle of a phase still picks the phase's true best. A single DST/dense run writes
``ticket_01.pt`` from its final weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ft_dist.layout import ticket_path
from ft_dist.train.checkpoint import write_ticket


def snapshot(
    module: nn.Module, masks: dict[str, torch.Tensor], cut: dict[str, list[int]] | None = None
) -> dict:
    """CPU fp32 copy of the weights (no wrapper prefixes) and bool masks; ``cut``: per channel
    group, the channels cut out of the model (a shrinking run; full numbering), which a
    loader cuts from the full architecture before it loads the weights."""
    state = {
        name: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().clone()
        for name, t in gathered(module.state_dict()).items()
    }
    masks = {n: m.detach().cpu().clone() for n, m in gathered(masks).items()}
    return {"model": state, "masks": masks} | ({"channels": {"removed": cut}} if cut else {})


def gathered(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors of a sharded model's DTensors (FSDP2; collective: every rank calls
    `snapshot`), so a ticket has today's format whatever the strategy."""
    return {n: t.full_tensor() if isinstance(t, DTensor) else t for n, t in tensors.items()}


class TicketKeeper:
    """Phase-local best candidate plus the record of tickets already written."""

    def __init__(self, run: Path, choose: Literal["best", "last"], meta: dict) -> None:
        self.run = Path(run)
        self.choose = choose
        self.meta = meta  # model, num_classes, in_channels, image_size, density, run_name
        self.written: list[int] = []
        self.candidate: dict | None = None  # {"phase", "epoch", "val_accuracy", "model", "masks"}

    def observe(
        self,
        phase: int,
        epoch: int,
        val_accuracy: float | None,
        module: nn.Module,
        masks: dict,
        cut: dict[str, list[int]] | None = None,
    ) -> None:
        """Keep this epoch's weights if they beat the phase's best so far (``choose=best``)."""
        if self.choose != "best":
            return
        if val_accuracy is None:
            raise ValueError("ticket=best needs a validation split: set data.val_split")
        best = self.candidate
        if best is None or best["phase"] != phase or val_accuracy > best["val_accuracy"]:
            self.candidate = {
                "phase": phase,
                "epoch": epoch,
                "val_accuracy": float(val_accuracy),
                **snapshot(module, masks, cut),
            }

    def finalise(
        self,
        number: int,
        *,
        phase: int,
        epoch: int,
        val_accuracy: float | None,
        module: nn.Module,
        masks: dict,
        member: int,
        train_flops: float,
        write: bool,
        cut: dict[str, list[int]] | None = None,
    ) -> Path:
        """Record ticket ``number`` (written to disk when ``write``: rank 0) and reset."""
        chosen = self.candidate if self.choose == "best" else None
        if chosen is None or chosen["phase"] != phase:
            chosen = {
                "epoch": epoch,
                "val_accuracy": val_accuracy,
                **snapshot(module, masks, cut),
            }
        path = ticket_path(self.run, number)
        meta = {
            **self.meta,
            "member": member,
            "phase": phase,
            "epoch": int(chosen["epoch"]),
            "val_accuracy": float("nan")
            if chosen["val_accuracy"] is None
            else chosen["val_accuracy"],
            "train_flops": float(train_flops),
        }
        if write:
            kept = {key: chosen[key] for key in ("model", "masks", "channels") if key in chosen}
            write_ticket(path, {**kept, "meta": meta})
        self.written.append(number)
        self.candidate = None
        return path

    def state_dict(self) -> dict:
        return {"written": list(self.written), "candidate": self.candidate}

    def load_state_dict(self, state: dict) -> None:
        self.written = [int(n) for n in state["written"]]
        self.candidate = state["candidate"]
