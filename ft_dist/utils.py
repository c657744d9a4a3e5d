"""Small helpers every layer shares (no torch.distributed logic beyond asking, no I/O
beyond one file or directory): one home so that no package carries its own copy."""

from __future__ import annotations

import hashlib
import os
import shutil
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


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The sibling temp file a file is written to before it is renamed over ``path``
    (per process, so that two writers never share one)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a sibling temp file, then rename it over ``path``: readers see
    the old file or the whole new one, never a torn write."""
    path = Path(path)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def partial_dir(path: str | os.PathLike[str]) -> Path:
    """The sibling ``.tmp-<name>`` a whole directory is built in before `replace_dir`
    publishes it as ``path`` (hidden, and never taken for a finished directory)."""
    path = Path(path)
    return path.with_name(f".tmp-{path.name}")


def replace_dir(partial: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Rename the finished directory ``partial`` to ``path``. A directory already at ``path``
    is set aside first (``.old-<name>``) and deleted only after the rename, so ``path`` holds
    the old directory or the whole new one, never a mix of the two."""
    partial, path = Path(partial), Path(path)
    old = path.with_name(f".old-{path.name}")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def write_dir_atomic(
    path: str | os.PathLike[str],
    write: Callable[[Path], object],
    publish: Callable[[Path, Path], object] = replace_dir,
) -> Path:
    """Call ``write(tmp)`` on an empty `partial_dir`, then ``publish(tmp, path)`` it (default
    `replace_dir`); on an error the partial directory is removed and ``path`` is left as it
    was. (Writes that several processes share, such as checkpoints, use the two steps
    themselves.)"""
    path = Path(path)
    partial = partial_dir(path)
    shutil.rmtree(partial, ignore_errors=True)  # a torn earlier attempt
    partial.mkdir(parents=True)
    try:
        write(partial)
        publish(partial, path)
        return path
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


Entry = TypeVar("Entry")


def table_entry(table: Mapping[str, Entry], name: str, key: str) -> Entry:
    """The entry ``name`` of a registry table; an unknown name is a ValueError naming the
    config key and every choice (the tables: criteria, strategies, ensemble methods)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{key}={name!r} is unknown; choose one of {', '.join(table)}") from None


def known_name(table: Mapping[str, object], name: str, key: str) -> str:
    """``name`` itself when it is an entry of ``table``, else `table_entry`'s ValueError: the
    field validator of every config key that names a table entry, so that the table's keys
    are the only list of choices (no ``Literal[...]`` copy of them)."""
    table_entry(table, name, key)
    return name


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), or its type's name when
    it has none: the cause quoted inside one of our own one-line messages."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def error_summary(error: BaseException) -> str:
    """``Type: first line`` of an error, or the type alone when it has no message."""
    line = first_line(error)
    name = type(error).__name__
    return name if line == name else f"{name}: {line}"


class Note(UserWarning):
    """A warning of ft_dist's own, about the user's config, model or run: the CLI prints its
    one line without the Python source location (`short_notes`)."""


class RenamedNote(Note, FutureWarning):
    """An old name that still works (a config key or value renamed)."""


def short_notes() -> None:
    """Print `Note` warnings as ``ft-dist: warning: <message>``; others as Python does."""
    import warnings

    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):  # noqa: ANN001
        if issubclass(category, Note):
            return f"ft-dist: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
