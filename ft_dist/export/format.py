"""The sparse tensor encoding of one member file: active values + a bitmask per masked layer.

A member file is the concatenation of its tensors' payloads, in the order of the index
kept in artifact.json. Each payload is either

* ``dense``: the tensor's raw bytes (little-endian, row-major) -- biases, BatchNorm
  weights and running statistics, and masked layers that are fully dense under ERK; or
* ``bitmask``: ``ceil(numel / 8)`` bytes of mask bits (numpy ``packbits``, little bit
  order, over the flattened tensor) followed by the raw bytes of the active values in
  flat order.

Why a bitmask and not CSR indices: a bitmask costs 1 bit per weight, int32 indices 32 bits
per active weight, so the bitmask is smaller at any density above 1/32. At d = 0.2 a
layer takes 0.2 × 32 + 1 = 7.4 bits per weight instead of 32 (0.23×).
"""

from __future__ import annotations

import hashlib
import math
import sys
from typing import Any

import numpy as np
import torch

DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)
    + (torch.int32, torch.uint8, torch.bool)
}


class ArtifactError(ValueError):
    """A damaged or foreign artifact; the message names the file and what to do."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if sys.byteorder != "little":  # the format is little-endian; so is every machine we run
        raise RuntimeError("ft-dist export writes little-endian files: run it on x86/ARM")
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def encode_tensor(
    name: str, tensor: torch.Tensor, mask: torch.Tensor | None
) -> tuple[dict[str, Any], bytes]:
    """(index entry without offset, payload) of one tensor."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name}: dtype {tensor.dtype} is not supported by the export")
    entry: dict[str, Any] = {"name": name, "dtype": dtype, "shape": list(tensor.shape)}
    entry["masked"] = mask is not None
    flat_mask = None if mask is None else mask.detach().cpu().reshape(-1).bool()
    if flat_mask is None or bool(flat_mask.all()):
        payload = _raw_bytes(tensor)
        entry["encoding"] = "dense"
    else:
        if flat_mask.numel() != tensor.numel():
            raise ValueError(
                f"mask of {name} has {flat_mask.numel()} entries, weight {tensor.numel()}"
            )
        bits = np.packbits(flat_mask.numpy(), bitorder="little").tobytes()
        values = tensor.detach().cpu().reshape(-1)[flat_mask]
        payload = bits + _raw_bytes(values)
        entry.update(encoding="bitmask", mask_nbytes=len(bits), num_active=int(values.numel()))
    entry.update(nbytes=len(payload), sha256=sha256_hex(payload))
    return entry, payload


def decode_tensor(
    entry: dict[str, Any], payload: bytes, where: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tensor, bool mask or None) from one payload; ``where`` names the file in errors."""
    name = entry["name"]
    if sha256_hex(payload) != entry["sha256"]:
        raise ArtifactError(f"{where}: tensor {name} does not match its sha256; re-export")
    dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
    numel = math.prod(shape)
    if entry["encoding"] == "dense":
        tensor = _from_bytes(payload, dtype, numel, where, name).reshape(shape)
        mask = torch.ones(shape, dtype=torch.bool) if entry["masked"] else None
        return tensor, mask
    split = int(entry["mask_nbytes"])
    bits = np.frombuffer(payload[:split], dtype=np.uint8)
    flat_mask = torch.from_numpy(np.unpackbits(bits, count=numel, bitorder="little").astype(bool))
    values = _from_bytes(payload[split:], dtype, int(entry["num_active"]), where, name)
    if int(flat_mask.sum()) != values.numel():
        raise ArtifactError(f"{where}: tensor {name} has a mask/value count mismatch; re-export")
    flat = torch.zeros(numel, dtype=dtype)
    flat[flat_mask] = values
    return flat.reshape(shape), flat_mask.reshape(shape)


def _from_bytes(data: bytes, dtype: torch.dtype, count: int, where: str, name: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != count * itemsize:
        raise ArtifactError(
            f"{where}: tensor {name} holds {len(data)} bytes, expected {count * itemsize}; re-export"
        )
    if count == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).clone()


def encode_member(
    state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[bytes, list[dict[str, Any]]]:
    """The bytes of one member file and the index of its tensors (state_dict order)."""
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise ValueError(f"masks for tensors not in the state_dict: {unknown}")
    chunks, index, offset = [], [], 0
    for name, tensor in state.items():
        entry, payload = encode_tensor(name, tensor, masks.get(name))
        entry["offset"] = offset
        offset += len(payload)
        chunks.append(payload)
        index.append(entry)
    return b"".join(chunks), index


def decode_member(
    data: bytes, index: list[dict[str, Any]], where: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict, masks) of one member file's bytes."""
    state, masks = {}, {}
    for entry in index:
        start, end = int(entry["offset"]), int(entry["offset"]) + int(entry["nbytes"])
        if end > len(data):
            raise ArtifactError(f"{where}: truncated inside tensor {entry['name']}; re-export")
        tensor, mask = decode_tensor(entry, data[start:end], where)
        state[entry["name"]] = tensor
        if mask is not None:
            masks[entry["name"]] = mask
    return state, masks
