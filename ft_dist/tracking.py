"""Experiment tracking: Weights & Biases (offline unless a key is set) and console progress.

The training loop talks to one `Tracker` object and never asks "is W&B on?" or "am I rank 0?":
`make_tracker` returns a `NullTracker` on every rank but 0 and whenever tracking is off, so
every call in the loop is unconditional (the nanoGPT "no-op logger" pattern).

Rank 0 gets a `RankZeroTracker` that

* prints a progress line (epoch/step, loss, lr, images/s, ETA) at most every
  `progress_every_s` seconds. Under Ray Train the worker's stdout is forwarded to the driver,
  so this is the live progress the user sees on the machine that ran `ft-dist train`;
* logs to one W&B run per member, grouped by experiment. The mode is `offline` when
  `WANDB_API_KEY` is not in the environment, so nothing needs a network or an account.
  The key is read by wandb itself from the environment; it is never a config field, and
  secret-looking keys are redacted from the config that is logged.

W&B charts use `trainer/step` (the optimizer step) as their x-axis rather than wandb's own
call counter, so a run resumed from an earlier checkpoint plots its repeated steps in the
right place instead of being dropped for "non-monotonic step".

W&B offers no public reader of a local run (`wandb.Api` needs a server; the `.wandb` log is
a private format), so the tracker also writes each call it makes on its W&B run to a JSONL
file beside W&B's run directories (`LoggedRunWriter`); `read_logged_run` reads it back
(history, summary, config, saved files): tests check what was logged with it, and a user can
inspect an offline run before `wandb sync`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from pydantic import Field

from ft_dist.configbase import Section

# Metric keys the console progress line reads (the loop logs them under these names).
EPOCH_KEY = "epoch"
LOSS_KEY = "train/loss"
LR_KEY = "train/lr"
THROUGHPUT_KEY = "train/images_per_s"
STEP_METRIC = "trainer/step"
# Metric namespaces printed on their own line as soon as they are logged (end of an eval).
EVAL_PREFIXES = ("val/", "eval/", "test/")
# Config keys whose values are never logged (matched as substrings, case-insensitive).
SECRET_MARKERS = ("api_key", "apikey", "token", "secret", "password")
REDACTED = "<redacted>"
# W&B writes its runs under DIR/wandb (wandb.init(dir=DIR)); our record of each goes beside them.
WANDB_SUBDIR = "wandb"
LOGGED_RUN_PREFIX = "ft_dist-logged-"


class TrackingConfig(Section):
    """The `tracking` section: where metrics go and how often progress is printed."""

    wandb: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto",
        description="auto = online when WANDB_API_KEY is set, else offline; disabled = no W&B",
    )
    project: str = Field("ft-dist", min_length=1)
    entity: str | None = None
    tags: tuple[str, ...] = ()
    dir: str | None = Field(
        None, description="where W&B writes its files; default: the run directory"
    )
    system_metrics: bool = Field(True, description="let W&B sample CPU/GPU utilisation")
    progress_every_s: float = Field(10.0, gt=0, description="seconds between progress lines")


class Tracker(Protocol):
    """What the training loop and the evaluator log through (same calls on every rank)."""

    def set_total(self, total_steps: int, num_epochs: int | None = None) -> None:
        """Denominators of the progress line (known once the data manifest is read)."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def summary(self, metrics: Mapping[str, Any]) -> None: ...

    def note(self, text: str) -> None:
        """One line for the console only (e.g. where a resumed run picks up)."""

    def log_images(self, images: Mapping[str, str | Path], step: int | None = None) -> None: ...

    def log_files(
        self, paths: Sequence[str | Path], base_dir: str | Path | None = None
    ) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Accepts every call and does nothing: ranks != 0, or tracking switched off."""

    def set_total(self, total_steps: int, num_epochs: int | None = None) -> None:
        pass

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def log_images(self, images: Mapping[str, str | Path], step: int | None = None) -> None:
        pass

    def log_files(self, paths: Sequence[str | Path], base_dir: str | Path | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def format_duration(seconds: float) -> str:
    """`3723` -> `1h02m03s`; short and fixed-order so progress lines line up."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class ConsoleProgress:
    """Throttled progress lines; the ETA uses the step rate seen by this process only.

    Measuring from this process's first logged step (not from step 0) keeps the ETA right
    after a resume, when the first step logged may already be far into the run.
    """

    run_name: str
    total_steps: int | None = None
    num_epochs: int | None = None
    every_s: float = 10.0
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    clock: Any = time.monotonic
    _first: tuple[int, float] | None = None
    _last_print: float = -math.inf
    _last_step: int | None = None

    def update(self, metrics: Mapping[str, Any], step: int) -> None:
        now = self.clock()
        if self._first is None:
            self._first = (step, now)
        evals = {k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIXES)}
        finished = self.total_steps is not None and step >= self.total_steps
        due = evals or finished or now - self._last_print >= self.every_s
        if due and step != self._last_step:  # one progress line per step at most
            self._last_print, self._last_step = now, step
            self._print(self.progress_line(metrics, step, now))
        if evals:
            self._print(f"[{self.run_name}] step {step} " + _format_metrics(evals))

    def progress_line(self, metrics: Mapping[str, Any], step: int, now: float) -> str:
        parts = []
        if EPOCH_KEY in metrics:  # epochs completed, fractional inside an epoch
            epochs = f"/{self.num_epochs}" if self.num_epochs else ""
            parts.append(f"epoch {float(metrics[EPOCH_KEY]):.2f}{epochs}")
        if self.total_steps:
            parts.append(f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%)")
        else:
            parts.append(f"step {step}")
        if LOSS_KEY in metrics:
            parts.append(f"loss {float(metrics[LOSS_KEY]):.4f}")
        if LR_KEY in metrics:
            parts.append(f"lr {float(metrics[LR_KEY]):.3g}")
        if THROUGHPUT_KEY in metrics:
            parts.append(f"{float(metrics[THROUGHPUT_KEY]):.0f} img/s")
        eta = self.eta_s(step, now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return f"[{self.run_name}] " + " | ".join(parts)

    def eta_s(self, step: int, now: float) -> float | None:
        if self._first is None or not self.total_steps:
            return None
        first_step, first_time = self._first
        if step <= first_step or now <= first_time:
            return None
        rate = (step - first_step) / (now - first_time)
        return max(0, self.total_steps - step) / rate

    def _print(self, line: str) -> None:
        # stream.write, not print(): Ray Train patches print() in its workers to log *and*
        # echo, which would show every line twice on the driver.
        self.stream.write(line + "\n")
        self.stream.flush()


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items())
    )


def redact_secrets(config: Any) -> Any:
    """A copy of a nested config with the value of every secret-looking key replaced."""
    if isinstance(config, Mapping):
        return {
            key: REDACTED
            if any(marker in str(key).lower() for marker in SECRET_MARKERS)
            else redact_secrets(value)
            for key, value in config.items()
        }
    if isinstance(config, list | tuple):
        return [redact_secrets(value) for value in config]
    return config


def resolve_wandb_mode(cfg: TrackingConfig, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode to run in; `online` needs the key in the environment, never in a file."""
    environ = os.environ if environ is None else environ
    has_key = bool(environ.get("WANDB_API_KEY"))
    if cfg.wandb == "auto":
        env_mode = environ.get("WANDB_MODE", "").lower()
        if env_mode in ("offline", "disabled", "online"):
            return env_mode if env_mode != "online" or has_key else "offline"
        return "online" if has_key else "offline"
    if cfg.wandb == "online" and not has_key:
        raise ValueError(
            "tracking.wandb=online needs WANDB_API_KEY in the environment of the training "
            "workers (on a cluster: of every node); set it there, or use tracking.wandb=offline"
        )
    return cfg.wandb


def wandb_run_id(project: str, group: str, run_name: str) -> str:
    """A stable id, so re-running (resuming) a member continues the same W&B run."""
    return hashlib.sha1(f"{project}/{group}/{run_name}".encode()).hexdigest()[:16]


class RankZeroTracker:
    """Console progress plus, unless disabled, one W&B run (created by `make_tracker`) and
    `record`, the plain copy of every call made on it."""

    def __init__(
        self,
        progress: ConsoleProgress,
        wandb_run: Any | None,
        record: LoggedRunWriter | None = None,
    ) -> None:
        self.progress = progress
        self.wandb_run = wandb_run
        self.record = record

    def _record(self, kind: str, **fields: Any) -> None:
        if self.record is not None:
            self.record.write(kind, **fields)

    def set_total(self, total_steps: int, num_epochs: int | None = None) -> None:
        self.progress.total_steps = total_steps
        self.progress.num_epochs = num_epochs

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.progress.update(metrics, step)
        if self.wandb_run is not None:
            row = {**metrics, STEP_METRIC: step}
            self.wandb_run.log(row)
            self._record("log", row=row)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self.progress._print(f"[{self.progress.run_name}] summary " + _format_metrics(metrics))
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(metrics))
            self._record("summary", values=dict(metrics))

    def note(self, text: str) -> None:
        self.progress._print(f"[{self.progress.run_name}] {text}")

    def log_images(self, images: Mapping[str, str | Path], step: int | None = None) -> None:
        if self.wandb_run is None or not images:
            return
        import wandb

        payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in images.items()}
        row: dict[str, Any] = {
            key: {"_type": "image", "path": str(path)} for key, path in images.items()
        }
        if step is not None:
            payload[STEP_METRIC] = row[STEP_METRIC] = step
        self.wandb_run.log(payload)
        self._record("log", row=row)

    def log_files(self, paths: Sequence[str | Path], base_dir: str | Path | None = None) -> None:
        if self.wandb_run is None:
            return
        names = []
        for path in map(Path, paths):
            base = Path(base_dir) if base_dir is not None else path.parent
            self.wandb_run.save(str(path.resolve()), base_path=str(base.resolve()), policy="now")
            names.append(path.resolve().relative_to(base.resolve()).as_posix())  # W&B's name
        self._record("files", names=names)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None
            self._record("finish", exit_code=exit_code)
        if self.record is not None:
            self.record.close()
            self.record = None


def make_tracker(
    cfg: TrackingConfig,
    *,
    run_name: str,
    group: str,
    config: Mapping[str, Any],
    rank: int,
    run_dir: str | Path | None = None,
    total_steps: int | None = None,
    num_epochs: int | None = None,
    job_type: str = "train",
) -> Tracker:
    """The tracker for this process: a `NullTracker` on ranks != 0, else console (+ W&B).

    `run_dir` (a local path) is where W&B writes `wandb/` unless `cfg.dir` says otherwise;
    `total_steps` / `num_epochs` give the progress line its denominators and ETA.
    """
    if rank != 0:
        return NullTracker()
    progress = ConsoleProgress(
        run_name, total_steps=total_steps, num_epochs=num_epochs, every_s=cfg.progress_every_s
    )
    mode = resolve_wandb_mode(cfg)
    if mode == "disabled":
        return RankZeroTracker(progress, None)
    import wandb

    wandb_dir = Path(cfg.dir or run_dir or Path.cwd())
    wandb_dir.mkdir(parents=True, exist_ok=True)
    logged_config = redact_secrets(dict(config))
    run = wandb.init(
        mode=mode,
        project=cfg.project,
        entity=cfg.entity,
        group=group,
        job_type=job_type,
        name=run_name,
        id=wandb_run_id(cfg.project, group, run_name),
        resume="allow",
        tags=list(cfg.tags),
        dir=str(wandb_dir),
        config=logged_config,
        settings=wandb.Settings(console="off", x_disable_stats=not cfg.system_metrics),
    )
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)
    record = LoggedRunWriter(logged_run_path(wandb_dir, run.id))
    record.write(  # what W&B made of our arguments, through its public attributes
        "init",
        run_id=run.id,
        name=run.name or "",
        project=run.project,
        group=run.group or "",
        job_type=run.job_type or "",
        mode=run.settings.mode,
        config=logged_config,
    )
    return RankZeroTracker(progress, run, record)


@dataclass
class LoggedRun:
    """What a `RankZeroTracker` handed to one W&B run, read back from its `LoggedRunWriter` file.

    A resumed run (same id) appends to the same file, so `history` holds every attempt's rows,
    as W&B's own history does; `exit_code` is None until a `finish` was recorded.
    """

    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    mode: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def logged_run_path(tracking_dir: str | Path, run_id: str) -> Path:
    """Our record of W&B run `run_id`, beside W&B's own `offline-run-*-<id>` directories.

    The name holds no `run-`, the mark of W&B's own run directories, which `wandb sync` reads.
    """
    return Path(tracking_dir) / WANDB_SUBDIR / f"{LOGGED_RUN_PREFIX}{run_id}.jsonl"


def _jsonable(value: Any) -> Any:
    """Tensors and numpy values as numbers or lists; anything else W&B accepts, as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _ends_mid_line(path: Path) -> bool:
    """Whether the last write to `path` was cut short (a killed process): no final newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


class LoggedRunWriter:
    """Appends one JSON line per call the tracker makes on its W&B run (see the module doc).

    Each line is flushed as written. A resumed run appends to the same file; a line cut short
    by a killed process is ended before the next one is appended, and skipped on reading.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cut_short = _ends_mid_line(path)
        self.path = path
        self._file: TextIO | None = path.open("a", encoding="utf-8")
        if cut_short:
            self._file.write("\n")

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"kind": kind, **fields}, default=_jsonable) + "\n")
            self._file.flush()
        except OSError as error:  # a full disk, say: name the file (errno kept: not retried)
            raise OSError(
                error.errno, f"{error.strerror} writing the run's record {self.path}"
            ) from error

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _wandb_dir(tracking_dir: str | Path) -> Path:
    """`DIR/wandb` when given the `DIR` W&B was given, else `tracking_dir` itself."""
    path = Path(tracking_dir)
    return path / WANDB_SUBDIR if (path / WANDB_SUBDIR).is_dir() else path


def read_logged_run(tracking_dir: str | Path, run_id: str | None = None) -> LoggedRun:
    """Read back what was logged to W&B run `run_id` under `tracking_dir` (the directory W&B
    was given, or its `wandb/`); without `run_id` the directory must hold exactly one run."""
    wandb_dir = _wandb_dir(tracking_dir)
    pattern = f"{LOGGED_RUN_PREFIX}{run_id or '*'}.jsonl"
    paths = sorted(wandb_dir.glob(pattern))
    if len(paths) != 1:
        raise FileNotFoundError(f"{wandb_dir}: expected one {pattern}, found {len(paths)}")
    run = LoggedRun()
    for line in paths[0].read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a write cut short by a killed process
            continue
        _apply(run, record)
    return run


def _apply(run: LoggedRun, record: dict[str, Any]) -> None:
    kind = record["kind"]
    if kind == "init":
        for name in ("run_id", "name", "project", "group", "job_type", "mode"):
            setattr(run, name, record[name])
        run.config.update(record["config"])
        run.exit_code = None  # a resumed run is running again
    elif kind == "log":
        run.history.append(record["row"])
    elif kind == "summary":
        run.summary.update(record["values"])
    elif kind == "files":
        run.files.extend(record["names"])
    elif kind == "finish":
        run.exit_code = record["exit_code"]
