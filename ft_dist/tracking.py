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

`read_offline_run` decodes the records of an offline run directory (history, summary,
config, saved files) without a W&B server: tests use it to check what was logged, and a
user can inspect an offline run before `wandb sync`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
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
FLOPS_KEY = "train/flops"
STEP_METRIC = "trainer/step"
# Metric namespaces printed on their own line as soon as they are logged (end of an eval).
EVAL_PREFIXES = ("val/", "eval/", "test/")
# Config keys whose values are never logged (matched as substrings, case-insensitive).
SECRET_MARKERS = ("api_key", "apikey", "token", "secret", "password")
REDACTED = "<redacted>"


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
    """Console progress plus, unless disabled, one W&B run (created by `make_tracker`)."""

    def __init__(self, progress: ConsoleProgress, wandb_run: Any | None) -> None:
        self.progress = progress
        self.wandb_run = wandb_run

    def set_total(self, total_steps: int, num_epochs: int | None = None) -> None:
        self.progress.total_steps = total_steps
        self.progress.num_epochs = num_epochs

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.progress.update(metrics, step)
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, STEP_METRIC: step})

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self.progress._print(f"[{self.progress.run_name}] summary " + _format_metrics(metrics))
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(metrics))

    def log_images(self, images: Mapping[str, str | Path], step: int | None = None) -> None:
        if self.wandb_run is None or not images:
            return
        import wandb

        payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in images.items()}
        if step is not None:
            payload[STEP_METRIC] = step
        self.wandb_run.log(payload)

    def log_files(self, paths: Sequence[str | Path], base_dir: str | Path | None = None) -> None:
        if self.wandb_run is None:
            return
        for path in map(Path, paths):
            base = Path(base_dir) if base_dir is not None else path.parent
            self.wandb_run.save(str(path.resolve()), base_path=str(base.resolve()), policy="now")

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


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
        config=redact_secrets(dict(config)),
        settings=wandb.Settings(console="off", x_disable_stats=not cfg.system_metrics),
    )
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)
    return RankZeroTracker(progress, run)


@dataclass
class OfflineRun:
    """What an offline W&B run recorded, decoded from its `run-<id>.wandb` file."""

    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _leveldb_records(data: bytes) -> list[bytes]:
    """Payloads of W&B's transaction log: LevelDB log format after a 7-byte `:W&B` header.

    The file is 32 KiB blocks of chunks `crc32 (4) | length (2) | type (1) | payload`; a record
    is one FULL chunk or FIRST, MIDDLE..., LAST chunks; block tails under 7 bytes are padding.
    """
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding up to the end of the block
            pos += left - 7 - length
        elif kind == 1:
            records.append(payload)
        elif kind in (2, 3):
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
            pending = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    """Record items as a dict; nested keys (e.g. an image's fields) become nested dicts."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def read_offline_run(run_dir: str | Path, wait_s: float = 10.0) -> OfflineRun:
    """Decode an `offline-run-*` directory (or a `wandb/` dir holding exactly one).

    wandb's writer process may still be flushing the log for a moment after `finish()`
    returns, so this re-reads for up to `wait_s` seconds until the run's exit record is in.
    """
    files = sorted(Path(run_dir).glob("**/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"{run_dir}: expected one run-*.wandb file, found {len(files)}")
    deadline = time.monotonic() + wait_s
    while True:
        run, finished = _decode_run(files[0].read_bytes())
        if finished or time.monotonic() >= deadline:
            return run
        time.sleep(0.1)


def _decode_run(data: bytes) -> tuple[OfflineRun, bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    out, finished = OfflineRun(), False
    for payload in _leveldb_records(data):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.run_id, out.name, out.project = run.run_id, run.display_name, run.project
            out.group = run.run_group
            out.config.update(_items(run.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
        elif kind == "history":
            out.history.append(_items(record.history.item))
        elif kind == "summary":
            out.summary.update(_items(record.summary.update))
        elif kind == "files":
            out.files.extend(item.path for item in record.files.files)
        finished = finished or kind == "exit"
    out.config.pop("_wandb", None)
    return out, finished
