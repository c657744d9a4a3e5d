"""Fault-injection points for `make chaos` (launch/chaos.py); inert unless armed.

``FT_DIST_FAILPOINTS=DIR`` (forwarded to Ray jobs by launch/submit.sh) names a directory.
A file there arms a point once: ``NAME`` for its next pass, ``NAME@STEP`` for its first
pass at ``step >= STEP``. The first process to pass an armed point takes it by renaming
the file to ``<file>.fired`` (atomic: one process, once), writes its pid and the point's
details there, and waits while that file exists (at most `STALL_S`). The chaos driver
then acts at a known moment -- kills the process in the middle of the work the point
marks, kills its node, fills the disk -- and deletes the file to let a survivor go on.
Without the variable a point costs one environment lookup.

Points: ``checkpoint-write`` (rank 0, a checkpoint's files written but not yet published)
and ``checkpoint-saved`` (rank 0, a checkpoint published), both with ``step``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "FT_DIST_FAILPOINTS"
STALL_S = 600.0  # long enough for any driver to act; then the work simply goes on
POLL_S = 0.1


def stall(name: str, **details: object) -> bool:
    """Wait here if point ``name`` is armed for these ``details``; True if it fired."""
    root = os.environ.get(ENV)
    if not root:
        return False
    for armed in sorted(Path(root).glob(f"{name}*")):
        if not _applies(armed.name, name, details.get("step")):
            continue
        fired = armed.with_name(f"{armed.name}.fired")
        try:
            armed.rename(fired)
        except OSError:  # another process took it first
            continue
        partial = fired.with_name(f".{fired.name}.tmp")
        partial.write_text(json.dumps({"pid": os.getpid(), **details}) + "\n")
        partial.replace(fired)  # the driver reads it whole
        deadline = time.monotonic() + STALL_S
        while fired.exists() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return True
    return False


def _applies(file_name: str, name: str, step: object) -> bool:
    if file_name == name:
        return True
    at = file_name.removeprefix(f"{name}@")
    return at != file_name and at.isdigit() and isinstance(step, int) and step >= int(at)
