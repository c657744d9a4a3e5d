"""Where runs keep their files: the one owner of the run-directory contract.

Training writes it, evaluation, export and the DST Ensemble orchestration read it; every
path below is built here and nowhere else.

RUN_DIR/config.yaml                 resolved config (written once a resume is accepted)
RUN_DIR/summary.json                final metrics, images/s, training FLOPs
RUN_DIR/checkpoints/<step>/         atomic: written to a temp dir, then renamed
RUN_DIR/tickets/ticket_<m>.pt       m = 01..M, never overwritten
RUN_DIR/eval/                       `ft-dist evaluate` report (report.json, report.md, plots)
EXP_DIR/members/member_<i>/         DST Ensemble: one RUN_DIR per member i = 1..M
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
TICKETS_DIR = "tickets"
TICKET_GLOB = "ticket_*.pt"
MEMBERS_DIR = "members"
MEMBER_PREFIX = "member_"
EVAL_DIR = "eval"


def run_dir(cfg: Any) -> Path:
    """RUN_DIR = output_dir / run_name (of a `train:` section); re-running resumes there."""
    return Path(cfg.output_dir).expanduser() / cfg.run_name


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def tickets_dir(run: Path) -> Path:
    return Path(run) / TICKETS_DIR


def ticket_relpath(member: int) -> str:
    """tickets/ticket_<m>.pt relative to RUN_DIR, m zero-padded to 2 digits (m = 1..M)."""
    if member < 1:
        raise ValueError(f"ticket numbers start at 1, got {member}")
    return f"{TICKETS_DIR}/ticket_{member:02d}.pt"


def ticket_path(run: Path, member: int) -> Path:
    return Path(run) / ticket_relpath(member)


def run_tickets(run: Path) -> list[Path]:
    """The tickets a run has written, in ticket order."""
    return sorted(tickets_dir(run).glob(TICKET_GLOB))


def members_dir(exp_dir: Path) -> Path:
    return Path(exp_dir) / MEMBERS_DIR


def member_name(member: int) -> str:
    return f"{MEMBER_PREFIX}{member}"


def member_dir(exp_dir: Path, member: int) -> Path:
    """The RUN_DIR of DST Ensemble member ``member`` (1..M)."""
    return members_dir(exp_dir) / member_name(member)


def member_summaries(exp_dir: Path) -> list[Path]:
    """EXP_DIR/members/member_<i>/summary.json of the members that have one."""
    return sorted(members_dir(exp_dir).glob(f"{MEMBER_PREFIX}*/{SUMMARY_FILE}"))


def eval_dir(run: Path) -> Path:
    """Where `ft-dist evaluate` writes its report by default."""
    return Path(run) / EVAL_DIR


def member_number(path: Path) -> int | None:
    """i of a ``member_<i>`` directory, None for any other name."""
    suffix = Path(path).name.removeprefix(MEMBER_PREFIX)
    return int(suffix) if Path(path).name.startswith(MEMBER_PREFIX) and suffix.isdigit() else None


def checkpoint_name(step: int) -> str:
    """Zero-padded so that a directory listing sorts in step order."""
    return f"{step:09d}"
