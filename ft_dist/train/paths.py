"""Where a run keeps its files (the run-directory contract shared by train, evaluate, ensembles).

RUN_DIR/config.yaml               resolved config
RUN_DIR/summary.json              final metrics, images/s, training FLOPs
RUN_DIR/checkpoints/<step>/       atomic: written to a temp dir, then renamed
RUN_DIR/tickets/ticket_<m>.pt     m = 01..M, never overwritten
"""

from __future__ import annotations

from pathlib import Path

from ft_dist.train.config import TrainConfig

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
TICKETS_DIR = "tickets"


def run_dir(cfg: TrainConfig) -> Path:
    """RUN_DIR = output_dir / run_name; re-running with the same name resumes there."""
    return Path(cfg.output_dir).expanduser() / cfg.run_name


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def ticket_path(run: Path, member: int) -> Path:
    """tickets/ticket_<m>.pt with m zero-padded to 2 digits (m = 1..M)."""
    if member < 1:
        raise ValueError(f"ticket numbers start at 1, got {member}")
    return Path(run) / TICKETS_DIR / f"ticket_{member:02d}.pt"


def checkpoint_name(step: int) -> str:
    """Zero-padded so that a directory listing sorts in step order."""
    return f"{step:09d}"
