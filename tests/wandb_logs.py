"""Test support for W&B offline runs: where W&B's own log of a run is (tests check that a real
W&B run was written beside ft_dist's record of it; its content is W&B's private format)."""

from __future__ import annotations

import time
from pathlib import Path

from ft_dist.tracking import WANDB_SUBDIR


def wandb_offline_log(tracking_dir: str | Path, run_id: str, wait_s: float = 30.0) -> Path:
    """W&B's own log of offline run `run_id` (`offline-run-*-<id>/run-<id>.wandb`, the newest
    if the run was resumed), once it is non-empty: the file `wandb sync` uploads.

    Its content is W&B's private format and stays opaque to us; this only finds it. W&B's
    writer may still be flushing for a moment after `finish()` returns, hence the wait.
    """
    path = Path(tracking_dir)  # the directory W&B was given, or its wandb/
    wandb_dir = path / WANDB_SUBDIR if (path / WANDB_SUBDIR).is_dir() else path
    deadline = time.monotonic() + wait_s
    while True:
        logs = sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
        if logs and logs[-1].stat().st_size > 0:
            return logs[-1]
        if time.monotonic() >= deadline:
            raise FileNotFoundError(f"{wandb_dir}: no non-empty offline W&B log of run {run_id}")
        time.sleep(0.1)
