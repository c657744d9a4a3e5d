"""Find and load the tickets of a run (EDST / single) or of a DST Ensemble experiment.

Layouts (the shared run-directory contract):
    RUN_DIR/tickets/ticket_01.pt ...               one run: EDST (one per phase) or single
    EXP_DIR/members/member_<i>/tickets/ticket_*.pt   DST Ensemble: one RUN_DIR per member;
                                                    its member ticket is the last one written
A ticket holds plain tensors and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ft_dist.layout import member_dirs, members_dir, run_tickets
from ft_dist.utils import first_line

META_KEYS = ("model", "num_classes", "in_channels", "image_size", "member", "density")
SHAPE_KEYS = ("num_classes", "in_channels", "image_size")

Layout = Literal["run", "experiment"]


@dataclass(frozen=True)
class Ticket:
    """One ensemble member as saved: weights, masks and metadata."""

    path: Path
    model_state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any]
    # {"removed": {group: [channels]}}: channels cut out of the model before its weights
    # were saved (a shrinking run); None: the full architecture
    channels: dict[str, Any] | None = None

    def removed_channels(self) -> dict[str, list[int]]:
        return dict((self.channels or {}).get("removed") or {})

    def full_sizes(self) -> dict[str, int]:
        """Positions of every parameter of the full architecture (before any cut), built
        on the meta device (no memory, no weights)."""
        from ft_dist.models import build_model_from_config, model_config_from_meta

        with torch.device("meta"):
            model = build_model_from_config(model_config_from_meta(self.meta, str(self.path)))
        return {name: p.numel() for name, p in model.named_parameters()}

    def full_densities(self) -> dict[str, float]:
        """Active fraction of each masked layer of the full architecture: channels cut out
        while training count as inactive (FLOPs and parameters against the dense model)."""
        if not self.removed_channels():
            return self.layer_densities()
        sizes = self.full_sizes()
        return {name: float(mask.sum()) / sizes[name] for name, mask in self.masks.items()}

    def layer_densities(self) -> dict[str, float]:
        """Fraction of active weights in every masked layer, from the saved masks."""
        return {name: float(mask.float().mean()) for name, mask in self.masks.items()}

    def input_shape(self) -> tuple[int, int, int]:
        size = int(self.meta["image_size"])
        return (int(self.meta["in_channels"]), size, size)


def find_tickets(path: str | Path) -> tuple[list[Path], Layout]:
    """The ticket files to ensemble in `path`, and which layout `path` has."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run or experiment directory")
    members = members_dir(root)
    if members.is_dir():
        dirs = member_dirs(root)
        chosen = [tickets[-1] for tickets in map(run_tickets, dirs) if tickets]
        missing = [d.name for d in dirs if not run_tickets(d)]
        if missing:
            raise FileNotFoundError(
                f"{members}: members {missing} have no tickets/ticket_*.pt yet; "
                "wait for them to finish (or resume them) before evaluating"
            )
        if not chosen:
            raise FileNotFoundError(f"{members}: no member_<i>/tickets/ticket_*.pt found")
        return chosen, "experiment"
    tickets = run_tickets(root)
    if not tickets:
        raise FileNotFoundError(
            f"{root}: no tickets/ticket_*.pt and no members/ directory; pass the RUN_DIR that "
            "`ft-dist train` printed (or a DST Ensemble EXP_DIR)"
        )
    return tickets, "run"


def load_ticket(path: str | Path) -> Ticket:
    """Read one ticket safely (weights_only) and check it has what evaluation needs."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(untrusted_message(path, error)) from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{path}: not a readable ticket ({first_line(error)})") from None
    if not isinstance(data, dict) or not {"model", "masks", "meta"} <= set(data):
        raise ValueError(f"{path}: a ticket is a dict with keys 'model', 'masks' and 'meta'")
    missing = [key for key in META_KEYS if key not in data["meta"]]
    if missing:
        raise ValueError(f"{path}: ticket meta lacks {missing}")
    channels = data.get("channels")
    if channels is not None and not isinstance(channels.get("removed"), dict):
        raise ValueError(f"{path}: ticket 'channels' must be {{'removed': {{group: [...]}}}}")
    return Ticket(path, dict(data["model"]), dict(data["masks"]), dict(data["meta"]), channels)


def untrusted_message(path: Path, error: pickle.UnpicklingError) -> str:
    """One line for a file torch's weights-only loader refused (never its advice to load
    with weights_only=False: that would run whatever code the file carries)."""
    if "unsupported global" not in str(error).lower():  # torch: a pickled object
        return f"{path}: not a readable ticket (not a torch.save file)"
    return (
        f"{path} is not a trusted ticket: it holds objects other than tensors, numbers and "
        "strings, so it was not loaded (loading could run code); use the tickets "
        "`ft-dist train` wrote"
    )


def check_compatible(tickets: list[Ticket]) -> None:
    """Members of one ensemble must predict the same classes from the same inputs."""
    first = tickets[0]
    for ticket in tickets[1:]:
        for key in SHAPE_KEYS:
            if ticket.meta[key] != first.meta[key]:
                raise ValueError(
                    f"{ticket.path}: meta.{key}={ticket.meta[key]} but {first.path} has "
                    f"{first.meta[key]}; an ensemble's members must share classes and inputs"
                )


def build_member(ticket: Ticket, device: torch.device | str = "cpu") -> nn.Module:
    """The ticket's network in eval mode, weights loaded and masks applied (with the
    channels it records as cut cut out of the architecture first)."""
    model = build_architecture(ticket.meta, ticket.removed_channels(), ticket.path)
    what = f"model {ticket.meta['model']!r}"
    return load_masked(model, ticket.model_state, ticket.masks, ticket.path, what).to(device)


def example_input(meta: dict[str, Any]) -> torch.Tensor:
    """A batch of one zero input of the shape a ticket's (or artifact's) facts give."""
    size = int(meta["image_size"])
    return torch.zeros(1, int(meta["in_channels"]), size, size)


def build_architecture(
    meta: dict[str, Any], removed: dict[str, list[int]], where: str | Path
) -> nn.Module:
    """The model a ticket's (or artifact's) facts describe, with ``removed`` channels (per
    group, full numbering) cut out (`ft_dist.sparse.slim.slim_model`)."""
    from ft_dist.models import build_model_from_config, model_config_from_meta
    from ft_dist.sparse.slim import slim_model

    model = build_model_from_config(model_config_from_meta(meta, str(where)))
    if not removed:
        return model
    try:
        return slim_model(model, {}, example_input(meta), removed).model
    except ValueError as error:
        raise ValueError(f"{where}: its channel cut does not fit the model: {error}") from None


def load_masked(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    where: str | Path,
    what: str,
) -> nn.Module:
    """``model`` with ``state`` loaded (strictly) and every mask applied, in eval mode; a
    mismatch is a ValueError naming ``where`` (the ticket or artifact) and ``what`` model."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{where}: weights do not fit {what}: {error}") from error
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise ValueError(f"{where}: mask for unknown parameter {name!r}")
            params[name].mul_(mask.to(params[name].dtype))
    return model.eval()
