"""Slim members: a ticket's removed channels physically cut out before it is encoded.

`slim_ticket` builds the ticket's masked network and cuts every channel that contributes
nothing (all of its positions inactive or zero: the channels channel-level DST removed, and
any an unstructured ticket left dead by chance) with `ft_dist.sparse.slim`: smaller dense
layers with their BatchNorm statistics and biases, the remaining weights keeping their
unstructured masks. The channels cut are recorded per member in artifact.json, and
`member_model` rebuilds the slim architecture from the ticket's model facts and them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.ensemble.tickets import (
    Ticket,
    build_architecture,
    build_member,
    example_input,
    load_masked,
)
from ft_dist.sparse.allocation import strip_wrapper_prefixes
from ft_dist.sparse.slim import dead_channels, slim_model
from ft_dist.sparse.structure import ChannelTraceError, channel_structure
from ft_dist.sparse.verify import cut_problem
from ft_dist.utils import Note


def slim_ticket(ticket: Ticket) -> tuple[dict, dict, dict[str, Any] | None]:
    """(slim state_dict, masks of the slim weights, channel record) of one ticket; when its
    dead channels cannot be cut exactly (the trial cut of sparse/verify.py fails), its masked
    network as it is, with a warning, and no record."""
    model = build_member(ticket)
    full = sum(p.numel() for p in model.parameters())
    example = example_input(ticket.meta)
    problem = cut_problem_of(model, ticket.masks, example)
    if problem is not None:
        warnings.warn(
            f"{ticket.path}: exported with its channels kept (masked, not slim): {problem}",
            Note,
            stacklevel=2,
        )
        return model.state_dict(), ticket.masks, None
    cut = slim_model(model, ticket.masks, example)
    first = ticket.removed_channels()  # cut while training (a shrinking run)
    record = {
        "removed": compose_removed(first, cut.removed, cut.sizes),
        "kept": cut.kept,
        "size": {name: size + len(first.get(name, [])) for name, size in cut.sizes.items()},
        "parameters": sum(p.numel() for p in cut.model.parameters()),
        "full_parameters": full,
    }
    return cut.model.state_dict(), cut.masks, record


def cut_problem_of(
    model: nn.Module, masks: dict[str, torch.Tensor], example: torch.Tensor
) -> str | None:
    """Why cutting the dead channels out of this masked network would not give the same
    network (None: it would, or none are dead)."""
    try:
        structure = channel_structure(model, example)
    except ChannelTraceError as error:
        return str(error)
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    removed = dead_channels(structure, params, masks)
    return cut_problem(model, structure, removed, example) if removed else None


def member_model(
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    channels: dict[str, Any] | None,
    where: str | Path,
) -> nn.Module:
    """A member's network as the artifact holds it: the ticket's model with the recorded
    channels cut, the slim weights loaded, masks applied, in eval mode."""
    model = build_architecture(meta, (channels or {}).get("removed") or {}, where)
    return load_masked(model, state, masks, where, f"the slim {meta['model']!r}")


def compose_removed(
    first: dict[str, list[int]], then: dict[str, list[int]], sizes: dict[str, int]
) -> dict[str, list[int]]:
    """Channels removed by two cuts, in the full model's numbering: ``first`` (full
    numbering), then ``then`` (numbered in the model ``first`` left, whose groups have
    ``sizes`` channels)."""
    removed = {}
    for name in sorted(set(first) | set(then)):
        gone = set(first.get(name, []))
        size = sizes.get(name, 0) + len(gone)
        left = [c for c in range(size) if c not in gone]
        removed[name] = sorted(gone | {left[i] for i in then.get(name, [])})
    return {name: channels for name, channels in removed.items() if channels}
