"""The tickets as safetensors files a model's own library can load (`load_ensemble.py`).

Each ``member_XX.safetensors`` holds one ticket's state_dict at the *full* width of the
architecture its library builds (`timm.create_model`, `torchvision.models.get_model`, the
user's file), so that ``build().load_state_dict(...)`` takes it without ft_dist. A ticket
cut while training (a shrinking run) is widened back: its cut channels return as zeros,
inactive in the masks (BatchNorm weight and bias 0, so the channel outputs 0, as a cut
channel does). The encoding is load_ensemble.py's: masked layers as a bit-packed mask
plus the active values. Every file is read back with that loader and checked against the
ticket's own network before the export is published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from ft_dist.ensemble.tickets import Ticket, build_architecture, build_member, example_input
from ft_dist.export import load_ensemble
from ft_dist.export.artifact import (
    LOADER_FILE,
    MEMBER_FILE_PREFIX,
    SHARED_FILE_SUFFIX,
    json_safe,
)
from ft_dist.export.format import ArtifactError, sha256_hex
from ft_dist.sparse.slim import full_tensor, keep_vectors
from ft_dist.sparse.structure import trace_structure
from ft_dist.utils import write_bytes_atomic


def safetensors_file(number: int) -> str:
    return f"{MEMBER_FILE_PREFIX}{number:02d}{SHARED_FILE_SUFFIX}"


def full_width(ticket: Ticket) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict, masks) of the ticket in the full architecture's shapes: as saved, or for
    a ticket cut while training, its cut channels put back as zeros (masks False)."""
    removed = ticket.removed_channels()
    if not removed:
        return ticket.model_state, ticket.masks
    model = build_architecture(ticket.meta, {}, ticket.path)
    structure, _ = trace_structure(model, example_input(ticket.meta))
    full = model.state_dict()
    params = dict(model.named_parameters())
    vectors = keep_vectors(structure, removed, {n: tuple(p.shape) for n, p in params.items()})
    state = {}
    for name, tensor in ticket.model_state.items():
        dims = vectors.get(name) or _buffer_dims(name, tensor, full, vectors)
        state[name] = full_tensor(tensor, dims)
        if name not in full or state[name].shape != full[name].shape:
            raise ValueError(
                f"{ticket.path}: cannot widen {name} back to the full {ticket.meta['model']!r} "
                "(its channel cut does not fit the model); export with --no-safetensors"
            )
    masks = {name: full_tensor(mask, vectors.get(name, {})) for name, mask in ticket.masks.items()}
    return state, masks


def _buffer_dims(
    name: str, tensor: torch.Tensor, full: dict[str, torch.Tensor], vectors: dict
) -> dict[int, torch.Tensor]:
    """A cut buffer (BatchNorm running statistics) follows its module's weight (or bias)
    along dim 0; a buffer of the full shape stays as it is."""
    if name not in full or tensor.shape == full[name].shape or tensor.dim() != 1:
        return {}
    module = name.rpartition(".")[0]
    for sibling in (f"{module}.weight", f"{module}.bias"):
        if 0 in vectors.get(sibling, {}):
            return {0: vectors[sibling][0]}
    return {}


def encode(
    state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], meta: dict[str, Any]
) -> bytes:
    """One member's safetensors bytes (load_ensemble.py's encoding)."""
    tensors, shapes = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        mask = masks.get(name)
        if mask is None or bool(mask.all()):
            tensors[name] = tensor
            continue
        flat = mask.detach().cpu().reshape(-1).bool()
        bits = np.packbits(flat.numpy(), bitorder="little")
        tensors[name + load_ensemble.MASK_SUFFIX] = torch.from_numpy(bits)
        tensors[name + load_ensemble.VALUES_SUFFIX] = tensor.reshape(-1)[flat].contiguous()
        shapes[name] = list(tensor.shape)
    metadata = {
        "format": "pt",
        "ft_dist.encoding": load_ensemble.ENCODING,
        "ft_dist.shapes": json.dumps(shapes),
        "ft_dist.meta": json.dumps(json_safe(meta), allow_nan=False),
    }
    return save_safetensors(tensors, metadata=metadata)


def member_meta(ticket: Ticket, facts: dict[str, Any]) -> dict[str, Any]:
    """What a member file says of itself: the ticket's facts and the preprocessing."""
    keys = ("recipe", "image_mode", "image_size", "in_channels", "mean", "std", "eval_transform")
    return {
        **ticket.meta,
        "preprocessing": {key: facts[key] for key in keys},
        "mean": facts["mean"],
        "std": facts["std"],
        "classes": facts["classes"],
    }


def write_safetensors(tickets: list[Ticket], out: Path, facts: dict[str, Any]) -> list[dict]:
    """``member_XX.safetensors`` of every ticket and ``load_ensemble.py`` into ``out``,
    checked with that loader; their manifest entries."""
    entries = []
    for number, ticket in enumerate(tickets, start=1):
        state, masks = full_width(ticket)
        data = encode(state, masks, member_meta(ticket, facts))
        name = safetensors_file(number)
        write_bytes_atomic(out / name, data)
        entries.append({"file": name, "nbytes": len(data), "sha256": sha256_hex(data)})
    write_bytes_atomic(out / LOADER_FILE, Path(load_ensemble.__file__).read_bytes())
    check_loaded(tickets, out)
    return entries


def check_loaded(tickets: list[Ticket], out: Path) -> None:
    """The members load_ensemble.py rebuilds from ``out`` compute what the tickets' own
    networks compute (`ft-dist evaluate`'s members), on random inputs."""
    first = tickets[0]
    loaded = load_ensemble.load_members(out, lambda: build_architecture(first.meta, {}, out))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, *example_input(first.meta).shape[1:], generator=generator)
    with torch.no_grad():
        for number, (ticket, model) in enumerate(zip(tickets, loaded, strict=True), start=1):
            expected, got = build_member(ticket)(images), model(images)
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                gap = float((got - expected).abs().max())
                raise ArtifactError(
                    f"{out / safetensors_file(number)}: the loaded ticket computes other "
                    f"outputs than {ticket.path} (max difference {gap:.2e}); export with "
                    "--no-safetensors and report it"
                )
