"""Load an `ft-dist export` ensemble from its safetensors tickets: torch + safetensors only.

This file is copied next to the tickets (OUT/load_ensemble.py) and imports nothing of
ft_dist, so whoever downloads the export needs torch, safetensors and the library that
builds the model (timm, torchvision, their own file, or ft_dist for its shipped models):

    import timm
    from load_ensemble import load_ensemble

    build = lambda: timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=3)
    ensemble = load_ensemble("path/to/export", build)  # an nn.Module, eval mode
    probs = ensemble(images)  # float images [N, C, H, W] in [0, 1] -> [N, classes]

``build()`` returns the untrained, full-width network the tickets were trained as (the model
card says the exact call). Each ``member_XX.safetensors`` holds one ticket's state_dict in
that network's shapes, with the weights of every masked layer stored sparsely:

* a tensor ``NAME`` stored as it is: a dense tensor (biases, BatchNorm weights and
  statistics, layers whose mask keeps every weight);
* ``NAME:mask`` + ``NAME:values``: a masked layer, as its mask bit-packed into uint8
  (little bit order over the flattened tensor, numpy ``packbits(bitorder="little")``: bit i
  of byte j is position 8j + i) and the active weights, in flat order. Inactive weights are
  zero. Its shape is in the file's metadata ``ft_dist.shapes`` (JSON name -> shape).

The file's metadata ``ft_dist.meta`` (JSON) holds the model facts and the preprocessing
(``mean``, ``std``: the images are normalised with them before every member).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

ENCODING = "ft_dist.bitmask-v1"
MASK_SUFFIX = ":mask"
VALUES_SUFFIX = ":values"
MEMBER_GLOB = "member_*.safetensors"


def unpack_mask(bits: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The bool mask of ``shape`` from its little-bit-order packed bytes."""
    numel = math.prod(shape)
    if bits.numel() != (numel + 7) // 8:
        raise ValueError(
            f"a mask of shape {shape} needs {(numel + 7) // 8} bytes, got {bits.numel()}"
        )
    shifts = torch.arange(8, dtype=torch.uint8)
    flat = (bits.reshape(-1, 1) >> shifts) & 1
    return flat.reshape(-1)[:numel].bool().reshape(shape)


def read_member(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """(state_dict with inactive weights zero, the ``ft_dist.meta`` facts, bool masks of the
    sparsely stored layers) of one ``member_XX.safetensors``."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = checked_metadata(path, handle.metadata())
        shapes = json.loads(metadata["ft_dist.shapes"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    state, masks = {}, {}
    for name, tensor in tensors.items():
        if name.endswith(VALUES_SUFFIX):
            continue
        if not name.endswith(MASK_SUFFIX):
            state[name] = tensor
            continue
        base = name.removesuffix(MASK_SUFFIX)
        mask = unpack_mask(tensor, shapes[base])
        values = tensors[base + VALUES_SUFFIX]
        if int(mask.sum()) != values.numel():
            raise ValueError(
                f"{path}: {base} has {values.numel()} values for {int(mask.sum())} bits"
            )
        full = torch.zeros(mask.numel(), dtype=values.dtype)
        full[mask.reshape(-1)] = values
        state[base], masks[base] = full.reshape(mask.shape), mask
    return state, json.loads(metadata["ft_dist.meta"]), masks


def checked_metadata(path: str | Path, metadata: dict[str, str] | None) -> dict[str, str]:
    if (metadata or {}).get("ft_dist.encoding") != ENCODING:
        raise ValueError(
            f"{path}: not an ft_dist ticket ({ENCODING}); load the files `ft-dist export` wrote"
        )
    return dict(metadata or {})


def read_meta(path: str | Path) -> dict:
    """The ``ft_dist.meta`` facts of one member file (model, preprocessing), no tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(checked_metadata(path, handle.metadata())["ft_dist.meta"])


def member_files(directory: str | Path) -> list[Path]:
    files = sorted(Path(directory).glob(MEMBER_GLOB))
    if not files:
        raise FileNotFoundError(f"{directory}: no {MEMBER_GLOB} (written by `ft-dist export`)")
    return files


def load_members(directory: str | Path, build: Callable[[], nn.Module]) -> list[nn.Module]:
    """Every member of the export in ``directory``: ``build()`` with its ticket loaded
    (strictly: a network of other shapes is an error), in eval mode."""
    members = []
    for path in member_files(directory):
        state, _, _ = read_member(path)
        model = build()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"{path} does not fit the network build() returned (build the model the "
                f"model card names): {error}"
            ) from None
        members.append(model.eval())
    return members


class Ensemble(nn.Module):
    """The members' mean softmax probability of raw images in [0, 1] (normalised here)."""

    def __init__(self, members: list[nn.Module], mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = (images.float() - self.mean) / self.std
        # exp(log_softmax) as `ft-dist evaluate` computes it, averaged: never the logits
        probs = [member(inputs).float().log_softmax(dim=-1).exp() for member in self.members]
        return torch.stack(probs).mean(dim=0)


def load_ensemble(directory: str | Path, build: Callable[[], nn.Module]) -> Ensemble:
    """The ensemble of the export in ``directory``, in eval mode (module docstring)."""
    members = load_members(directory, build)
    meta = read_meta(member_files(directory)[0])
    return Ensemble(members, meta["mean"], meta["std"]).eval()
