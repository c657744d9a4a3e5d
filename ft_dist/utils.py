"""Small helpers every layer shares (no torch.distributed logic beyond asking, no I/O
beyond one file): one home so that no package carries its own copy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # torch is imported when a distributed check runs, not by file helpers
    import torch.distributed as dist


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes, machines and Python versions
    (``hash()`` is salted per process; sha256 is not)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a sibling temp file, then rename it over ``path``: readers see
    the old file or the whole new one, never a torn write."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


Entry = TypeVar("Entry")


def table_entry(table: Mapping[str, Entry], name: str, key: str) -> Entry:
    """The entry ``name`` of a registry table; an unknown name is a ValueError naming the
    config key and every choice (the tables: criteria, strategies, ensemble methods)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{key}={name!r} is unknown; choose one of {', '.join(table)}") from None
