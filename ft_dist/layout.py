"""Where runs keep their files: the one owner of the run-directory contract.

Training writes it, evaluation, export and the DST Ensemble orchestration read it; every
path below is built here and nowhere else.

RUN_DIR/config.yaml                 resolved config (written once a resume is accepted)
RUN_DIR/summary.json                final metrics, images/s, training FLOPs
RUN_DIR/definition.json             what defines the run and the changes accepted on
                                    resumes (train/definition.py)
RUN_DIR/run.lock                    held by the run's driver while it runs (runlock.py):
                                    the holder's host, pid and start; empty once released
RUN_DIR/driver.log                  what the driver keeps off the console: the stack of a
                                    run stopped by a signal
RUN_DIR/checkpoints/<step>/         atomic: written to a temp dir, then renamed (the files
                                    inside are train/checkpoint.py's format)
RUN_DIR/tickets/ticket_<m>.pt       m = 01..M, never overwritten
RUN_DIR/eval/                       `ft-dist evaluate` report: report.json, report.md,
                                    plots/<name>.png (the same names under any --out)
RUN_DIR/export/                     where `ft-dist compare` / `bench channels` export a run
                                    (export/artifact.py's format)
EXP_DIR/members/member_<i>/         DST Ensemble: one RUN_DIR per member i = 1..M
EXP_DIR/tune/                       DST Ensemble: Ray Tune's experiment state
SWEEP_DIR/sweep.json                `ft-dist sweep`: what the sweep is (a re-run must be the
                                    same sweep to resume it; orchestrate/sweep_plan.py)
SWEEP_DIR/tune/                     `ft-dist sweep`: Ray Tune's experiment state
SWEEP_DIR/trial-<hash>/             one RUN_DIR (an EXP_DIR for a DST Ensemble) per trial
SWEEP_DIR/results.csv, results.md   the sweep's table, best first; plot.png: the metric
SWEEP_DIR/plot.png                  against each swept key
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
DEFINITION_FILE = "definition.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "run.lock"
DRIVER_LOG = "driver.log"
CHECKPOINTS_DIR = "checkpoints"
TICKETS_DIR = "tickets"
TICKET_GLOB = "ticket_*.pt"
MEMBERS_DIR = "members"
MEMBER_PREFIX = "member_"
EVAL_DIR = "eval"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"
PLOTS_DIR = "plots"
EXPORT_DIR = "export"
TUNE_DIR = "tune"
SWEEP_RECORD_FILE = "sweep.json"
TRIAL_PREFIX = "trial-"
RESULTS_CSV_FILE = "results.csv"
RESULTS_MD_FILE = "results.md"
SWEEP_PLOT_FILE = "plot.png"


def run_dir(cfg: Any) -> Path:
    """RUN_DIR = output_dir / run_name (of a `train:` section); re-running resumes there."""
    return Path(cfg.output_dir).expanduser() / cfg.run_name


def config_path(run: Path) -> Path:
    """RUN_DIR/config.yaml (also EXP_DIR/config.yaml of a DST Ensemble)."""
    return Path(run) / CONFIG_FILE


def definition_path(run: Path) -> Path:
    """RUN_DIR/definition.json: see train/definition.py."""
    return Path(run) / DEFINITION_FILE


def summary_path(run: Path) -> Path:
    return Path(run) / SUMMARY_FILE


def lock_path(run: Path) -> Path:
    """RUN_DIR/run.lock (also EXP_DIR/run.lock of a DST Ensemble): see runlock.py."""
    return Path(run) / LOCK_FILE


def driver_log(run: Path) -> Path:
    """RUN_DIR/driver.log: the driver's notes that stay off the console."""
    return Path(run) / DRIVER_LOG


# --------------------------------------------------------------------------- checkpoints
def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def checkpoint_name(step: int) -> str:
    """Zero-padded so that a directory listing sorts in step order."""
    return f"{step:09d}"


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    """checkpoints/<step>/ under a `checkpoints_dir`."""
    return Path(checkpoints) / checkpoint_name(step)


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoints/<step> path, None for any other name (the temp dirs of a
    write in progress among them)."""
    name = Path(path).name
    return int(name) if name.isdigit() else None


def checkpoint_dirs(checkpoints: Path) -> list[Path]:
    """The complete checkpoint directories under a `checkpoints_dir`, oldest step first
    (none when it does not exist)."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    steps = {p: checkpoint_step(p) for p in root.iterdir() if p.is_dir()}
    return sorted((p for p, step in steps.items() if step is not None), key=steps.__getitem__)


# --------------------------------------------------------------------------- tickets
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


# --------------------------------------------------------------------------- DST Ensemble
def members_dir(exp_dir: Path) -> Path:
    return Path(exp_dir) / MEMBERS_DIR


def member_name(member: int) -> str:
    return f"{MEMBER_PREFIX}{member}"


def member_dir(exp_dir: Path, member: int) -> Path:
    """The RUN_DIR of DST Ensemble member ``member`` (1..M)."""
    return members_dir(exp_dir) / member_name(member)


def member_number(path: Path) -> int | None:
    """i of a ``member_<i>`` directory, None for any other name."""
    suffix = Path(path).name.removeprefix(MEMBER_PREFIX)
    return int(suffix) if Path(path).name.startswith(MEMBER_PREFIX) and suffix.isdigit() else None


def _member_order(path: Path) -> tuple[int, str]:
    """member_2 before member_10 (numeric order), unparsable names last."""
    number = member_number(path)
    return (number, "") if number is not None else (1 << 30, path.name)


def member_dirs(exp_dir: Path) -> list[Path]:
    """EXP_DIR/members/member_*/ directories in member order (member_2 before member_10;
    a ``member_`` name without a number last); none when there is no members/."""
    members = members_dir(exp_dir)
    if not members.is_dir():
        return []
    return sorted((p for p in members.glob(f"{MEMBER_PREFIX}*") if p.is_dir()), key=_member_order)


def member_summaries(exp_dir: Path) -> list[Path]:
    """EXP_DIR/members/member_<i>/summary.json of the members that have one."""
    return [path for path in map(summary_path, member_dirs(exp_dir)) if path.is_file()]


def members_storage_path(storage_path: str, run_name: str) -> str:
    """Where Ray persists the members of experiment ``run_name`` under ``ray.storage_path``
    (a local path or a URI): <storage>/<run_name>/members, apart from other experiments'."""
    return f"{storage_path.rstrip('/')}/{run_name}/{MEMBERS_DIR}"


def tune_dir(exp_dir: Path) -> Path:
    """EXP_DIR/tune: Ray Tune's experiment state of a DST Ensemble (SWEEP_DIR/tune of a
    sweep)."""
    return Path(exp_dir) / TUNE_DIR


# --------------------------------------------------------------------------- sweeps
def sweep_record_path(sweep_dir: Path) -> Path:
    """SWEEP_DIR/sweep.json: what the sweep is (orchestrate/sweep_plan.py)."""
    return Path(sweep_dir) / SWEEP_RECORD_FILE


def trial_dir_name(digest: str) -> str:
    """trial-<digest>: a trial's directory under SWEEP_DIR (digest: of its swept values)."""
    return f"{TRIAL_PREFIX}{digest}"


def sweep_results_csv(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / RESULTS_CSV_FILE


def sweep_results_md(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / RESULTS_MD_FILE


def sweep_plot_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / SWEEP_PLOT_FILE


# --------------------------------------------------------------------------- evaluation, export
def eval_dir(run: Path) -> Path:
    """Where `ft-dist evaluate` writes its report by default."""
    return Path(run) / EVAL_DIR


def report_path(out_dir: Path) -> Path:
    """report.json of an evaluation written to ``out_dir`` (`eval_dir` by default)."""
    return Path(out_dir) / REPORT_FILE


def report_md_path(out_dir: Path) -> Path:
    return Path(out_dir) / REPORT_MD_FILE


def plots_dir(out_dir: Path) -> Path:
    return Path(out_dir) / PLOTS_DIR


def eval_report(run: Path) -> Path:
    """RUN_DIR/eval/report.json: the report `ft-dist evaluate RUN_DIR` writes by default."""
    return report_path(eval_dir(run))


def export_dir(run: Path) -> Path:
    """RUN_DIR/export: where `ft-dist compare` and `bench channels` export a run."""
    return Path(run) / EXPORT_DIR
