"""Ray Train glue: the only module that imports `ray.train`.

`fit(cfg)` runs one member as a Ray Train `TorchTrainer` worker group and returns its run
directory. Each worker builds a `RaySession` and a tracker and calls the per-worker loop
(`ft_dist.train.loop.train`), which knows nothing of Ray.

Checkpoints and resume. The loop writes each checkpoint itself, atomically, to
RUN_DIR/checkpoints/<step>/ and prunes old ones (checkpoint.py); then every rank calls
`session.report(metrics, checkpoint_dir)`. `RaySession.report` hands that directory to
`ray.train.report(..., checkpoint=...)`, which persists it to the run's storage
(`RunConfig(storage_path, name)`: ray.storage_path, or train.output_dir) under
`ray_checkpoints/<step>/` (`<step>.<n>` when a run that fell back past a damaged
checkpoint writes a step again: two registrations never share a directory) and records it
in Ray's run snapshot. A resume starts from the newest complete checkpoint in RUN_DIR
(atomic, indexed, verified on load with a fall back to the one before), which may be newer
than Ray's newest registered one (a worker killed between writing and reporting it).

* Storage on the same filesystem as the run directory (a local dir, NFS): the "upload"
  hard-links the files, so Ray's copy costs no bytes and no time. Ray prunes its copies
  (`CheckpointConfig(num_to_keep)`), the loop prunes its own; neither deletes the other's.
* Cloud storage (`s3://...`): Ray uploads the files; a resume downloads them again.

A dead worker fails the worker group; `fit` starts a new one (up to `ray.max_failures`
times) whose workers resume from the newest complete checkpoint (RaySession).
`fit` does this rather than Ray's `FailureConfig(max_failures)` because Ray Train cannot
tell a deterministic user error (ValueError / FileNotFoundError from our config, data and
checkpoint checks) from a crash, and would retry it. Re-running `ft-dist train` with the
same run name and storage finds Ray's snapshot in RUN_DIR and resumes the same way; a
finished run resumes at its end and does no more steps.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ft_dist.layout import run_dir
from ft_dist.models.config import with_builder_source
from ft_dist.private_api import is_worker_group_start_timeout
from ft_dist.runlock import RunLock
from ft_dist.tracking import make_tracker
from ft_dist.train.config import format_resources, worker_resources
from ft_dist.train.definition import settle_on_driver
from ft_dist.train.diskspace import DiskFullError, dir_bytes, disk_full_message, is_disk_full
from ft_dist.train.session import latest_complete_checkpoint
from ft_dist.utils import first_line, partial_dir, write_dir_atomic

# Where Ray's registered copies of checkpoints live, relative to the run directory.
RAY_CHECKPOINTS = "ray_checkpoints"
# Raised by our own config, data and checkpoint checks: the same on every try, never retried,
# re-raised as themselves (the CLI prints their one line).
USER_ERRORS = (ValueError, FileNotFoundError)
# A collective whose peer went away says so in these words (gloo, NCCL, TCPStore).
PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out")
# Tries Ray gets to place a single run's worker group (about a minute each) before fit() fails.
START_UP_ATTEMPTS = 10


class WorkerError(RuntimeError):
    """A worker raised an error that another try would raise again (not retried)."""


class ClusterBusyError(RuntimeError):
    """The cluster could hold the worker group but never had room free for it."""


LoopFn = Callable[[Any, Any, Any], Any]  # (cfg, session, tracker) -> anything


def is_local_path(path: str) -> bool:
    """True for plain paths and file:// URIs (a filesystem this process can hard-link on)."""
    return "://" not in path or path.startswith("file://")


def absolute_paths(cfg: Any, base: str | Path | None = None) -> Any:
    """The config with its local paths made absolute against `base`.

    Ray workers run in their own directories (and a `ray job submit` driver in an unpacked
    copy of the working dir), so a relative `runs` or `data/mnist` must be fixed on the
    driver. `base` defaults to FT_DIST_BASE_DIR (set by launch/submit.sh to the directory
    the job was submitted from) or the current directory. URLs and pipe: commands are
    left alone.
    """
    base = Path(base or os.environ.get("FT_DIST_BASE_DIR") or Path.cwd())

    def fix(value: str | None) -> str | None:
        if value is None or "://" in value or value.startswith("pipe:"):
            return value
        return str((base / Path(value).expanduser()).resolve())

    updates = {
        "model": with_builder_source(cfg.model, base),
        "data": cfg.data.model_copy(update={"root": fix(cfg.data.root)}),
        "train": cfg.train.model_copy(update={"output_dir": fix(cfg.train.output_dir)}),
        "ray": cfg.ray.model_copy(update={"storage_path": fix(cfg.ray.storage_path)}),
        "tracking": cfg.tracking.model_copy(update={"dir": fix(cfg.tracking.dir)}),
    }
    return cfg.model_copy(update=updates)


def storage_root(cfg: Any) -> str:
    """Where Ray persists checkpoints: ray.storage_path, else the run's output_dir."""
    return cfg.ray.storage_path or str(Path(cfg.train.output_dir).expanduser())


def link_tree(src: Path, dest: Path) -> None:
    """Mirror `src` into `dest` with hard links (copies across filesystems), atomically."""

    def mirror(tmp: Path) -> None:
        for path in sorted(src.rglob("*")):
            target = tmp / path.relative_to(src)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another filesystem, or links not supported
                shutil.copy2(path, target)

    write_dir_atomic(dest, mirror)  # an empty checkpoint is still a directory


def raise_if_disk_full(error: OSError, src: Path, dest: Path) -> None:
    """A full storage disk is a one-line DiskFullError (never retried), the partial copy
    removed; the run's own checkpoint in RUN_DIR stays."""
    needed = dir_bytes(src)
    if is_disk_full(error, dest.parent, needed):
        shutil.rmtree(partial_dir(dest), ignore_errors=True)
        fix = "free space there or set ray.storage_path to a bigger disk"
        raise DiskFullError(
            disk_full_message(dest, needed, "Ray's copy of checkpoint", fix)
        ) from None


class RaySession:
    """The `Session` of one Ray Train worker: ranks from the train context, reports and
    resume points through `ray.train.report` / `ray.train.get_checkpoint`."""

    def __init__(
        self, storage: str, run_name: str, run: Path, *, epoch_reports: bool = False
    ) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.run = run
        self._storage = storage
        self._experiment = Path(storage.removeprefix("file://")) / run_name
        self._download_dir: str | None = None
        self._token = os.urandom(3).hex()
        self.last_metrics: dict[str, Any] = {}
        self._epoch_reports = epoch_reports

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Register a checkpoint with Ray (every rank calls this; rank 0 hands over the dir).

        Metrics-only reports stay in this process (`last_metrics`): a `ray.train.report` is
        a barrier across workers plus a round trip through the controller (1-2 s per call
        measured on a busy 2-core machine), far too slow to pay per step. The metrics that go with each
        checkpoint still reach Ray (and `Result.metrics`). With ``epoch_reports`` (a sweep,
        whose scheduler reads a metric after each epoch) the epoch's report without a
        checkpoint reaches Ray too: one round trip per epoch.
        """
        metrics = {key: _plain(value) for key, value in metrics.items()}
        self.last_metrics.update(metrics)
        if checkpoint_dir is None:
            if self._epoch_reports:
                ray.train.report(dict(self.last_metrics))
            return
        metrics = dict(self.last_metrics)
        name = self._ray_copy_name(Path(checkpoint_dir).name)
        checkpoint = Checkpoint.from_directory(checkpoint_dir) if self.rank == 0 else None
        upload = self._link_upload if is_local_path(self._storage) else None
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=name,
            checkpoint_upload_fn=upload,
            delete_local_checkpoint_after_upload=False,
        )

    def _ray_copy_name(self, step_name: str) -> str:
        """Where Ray keeps its copy: ``ray_checkpoints/<step>``, or ``<step>.<n>`` when that
        name is taken -- a run that fell back past a damaged checkpoint writes the same step
        again, and two registrations sharing one directory would leave Ray's run snapshot
        naming a directory Ray deleted with the older one (every later start then fails
        with CheckpointManagerInitializationError). Only rank 0's name counts (Ray
        broadcasts it). Remote storage cannot be listed cheaply: there every worker group
        adds its own token, so no two of its registrations share a name."""
        if not is_local_path(self._storage):
            return f"{RAY_CHECKPOINTS}/{step_name}.{self._token}"
        name, n = f"{RAY_CHECKPOINTS}/{step_name}", 1
        while (self._experiment / name).exists():
            name, n = f"{RAY_CHECKPOINTS}/{step_name}.{n}", n + 1
        return name

    def _link_upload(self, checkpoint: Checkpoint, name: str) -> Checkpoint:
        dest = self._experiment / name
        try:
            link_tree(Path(checkpoint.path), dest)
        except OSError as error:  # copies (another file system) can fill a disk
            raise_if_disk_full(error, Path(checkpoint.path), dest)
            raise
        return Checkpoint.from_directory(str(dest))

    def latest_checkpoint_dir(self) -> str | None:
        """The newest complete checkpoint in RUN_DIR (the loop verifies it and falls back
        to an older one there when it is damaged): it may be newer than the newest one Ray
        registered (a worker killed between writing and reporting it), and never older.
        Without one there (RUN_DIR lost, cloud storage kept), Ray's newest registered
        checkpoint, downloaded when remote."""
        newest = latest_complete_checkpoint(self.run)
        if newest is not None:
            return newest
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if is_local_path(self._storage):
            return checkpoint.path
        if self._download_dir is None:
            self._download_dir = tempfile.mkdtemp(prefix="ft_dist_resume_")
            checkpoint.to_directory(self._download_dir)
        return self._download_dir


def _plain(value: Any) -> Any:
    """Ray pickles metrics: send numbers, not tensors that pin device memory."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _quiet_report_logs() -> None:
    """Drop Ray Train V2's "Reporting training result ..." lines: it logs every `report` call
    with its full metrics dict at INFO, and our own progress line already says the same, once
    and readably.

    Ray offers no public switch for them: they come from a logger named after Ray's source
    file, outside the `ray.train` tree that `ray.train.LoggingConfig` sets the level of. They
    propagate to the root logger's handlers (console and log file, set up by Ray before the
    train function runs), so a filter there drops them by their text. Only standard `logging`
    is used, so a Ray upgrade cannot make this raise; at worst the lines come back.
    """
    import logging

    def not_a_report(record: logging.LogRecord) -> bool:
        text = record.msg
        return not (isinstance(text, str) and text.startswith("Reporting training result"))

    for handler in logging.getLogger().handlers:
        handler.addFilter(not_a_report)


def _train_per_worker(payload: dict) -> None:
    """The function every Ray Train worker runs: session + tracker + the loop."""
    cfg, loop = payload["cfg"], payload["loop"]
    _quiet_report_logs()
    if loop is None:
        from ft_dist.train.loop import train as loop
    run = run_dir(cfg.train)
    session = RaySession(
        payload["storage"], cfg.train.run_name, run, epoch_reports=payload["epoch_reports"]
    )
    tracker = make_tracker(
        cfg.tracking,
        run_name=payload["name"],
        group=payload["group"],
        config=cfg.model_dump(mode="json", exclude={"model": {"source"}}),
        rank=session.rank,
        run_dir=run if session.rank == 0 else None,
        num_epochs=cfg.num_epochs,
    )
    exit_code = 1
    try:
        loop(cfg, session, tracker)
        exit_code = 0
        # Free the model, DDP reducer and strategy (reference cycles) now, while the
        # process group Ray tears down after this function is still alive.
        gc.collect()
    finally:
        tracker.finish(exit_code=exit_code)


def build_trainer(
    cfg: Any,
    loop: LoopFn | None = None,
    group: str | None = None,
    callbacks: Sequence[ray.train.UserCallback] = (),
    name: str | None = None,
) -> TorchTrainer:
    """The TorchTrainer for one member; `loop` defaults to `ft_dist.train.loop.train`.

    ``callbacks`` run in Ray Train's controller after each report (a sweep passes Tune's
    report callback); with any, every epoch's metrics are reported, not only checkpoints'.
    ``name`` is the run's name in W&B (its run id with ``group``) and on progress lines:
    train.run_name by default; a sweep names the members of its DST Ensembles apart.
    """
    storage = storage_root(cfg)
    resources = worker_resources(cfg.ray)
    payload = {
        "cfg": cfg,
        "loop": loop,
        "storage": storage,
        "group": group or cfg.train.run_name,
        "name": name or cfg.train.run_name,
        "epoch_reports": bool(callbacks),
    }
    return TorchTrainer(
        _train_per_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=worker_count(cfg),
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=cfg.ray.resize_interval_s,
        ),
        run_config=RunConfig(
            name=cfg.train.run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # Restarts after worker failures are fit()'s (it never retries a user error);
            # a busy cluster is waited for START_UP_ATTEMPTS x Ray's start-up timeout.
            failure_config=FailureConfig(
                max_failures=0, controller_failure_limit=start_up_limit(cfg)
            ),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
    )


def worker_count(cfg: Any) -> int | tuple[int, int]:
    """Ray's num_workers: a (min, max) range makes the worker group elastic. A lost node
    fails the group; fit() starts a new one on the workers left (at least min), and Ray
    resizes it back up when the node returns. The loop keeps the global batch fixed."""
    train = cfg.train
    return (train.min_workers, train.num_workers) if train.elastic else train.num_workers


def connect(address: str | None, log_to_driver: bool = True) -> None:
    """Join `address`, RAY_ADDRESS or the job's cluster; start a local one without any.

    `log_to_driver=False` keeps the workers' output (progress lines) off this process's
    stdout, for callers that print machine-readable output there.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise ValueError(
            f"RAY_ADDRESS={address} is a job-submission (dashboard) address: submit with "
            "`launch/submit.sh CONFIG ...` (ray job submit), or set ray.address / RAY_ADDRESS "
            "to the cluster's GCS address (host:port, e.g. 127.0.0.1:6379)"
        )
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        where = f"joined the Ray cluster at {address}"
    else:
        where = start_local_cluster(log_to_driver)
    print(f"ft-dist: {where}", file=sys.stderr, flush=True)


def start_local_cluster(log_to_driver: bool = True) -> str:
    """Start a new local Ray cluster, never joining another one on this machine; returns
    what was started, for the user.

    Without an address `ray.init()` joins the last cluster `ray start` left here, and one
    it starts itself is found by Ray Train's placement-group cleaner actor through the
    state API, which looks for "the" local cluster and fails with "Found multiple active
    Ray instances" when another runs. So: address="local" (always a new cluster), and its
    dashboard (the state API server) on a port picked here, named to every process of
    this job through RAY_API_SERVER_ADDRESS, which the state API reads first.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_server = f"http://127.0.0.1:{port}"
    context = ray.init(
        address="local",
        log_to_driver=log_to_driver,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": api_server}},
    )
    gcs = ray.get_runtime_context().gcs_address
    dashboard = context.dashboard_url or api_server
    return (
        f"started a local Ray cluster (GCS {gcs}, dashboard {dashboard}); set ray.address "
        "or RAY_ADDRESS to join another one instead"
    )


def fit(
    cfg: Any,
    loop: LoopFn | None = None,
    *,
    group: str | None = None,
    allow_change: Sequence[str] = (),
    callbacks: Sequence[ray.train.UserCallback] = (),
    name: str | None = None,
) -> Path:
    """Train one member on the Ray cluster (joined or started) and return its run directory.

    A worker group that lost a worker, a node or a connection (`is_transient`) is started
    again from the newest checkpoint, up to `ray.max_failures` times. One whose workers only
    raised errors of their own (a permission denied, a corrupt input, a bug in a model)
    would fail the same way on every try: it stops at once, re-raising a user error
    (ValueError / FileNotFoundError: our config, data and checkpoint checks) as itself and
    any other as a one-line `WorkerError`. Failures left after the restarts raise
    `ray.train.WorkerGroupError`; workers that the cluster never finds room for raise
    `ClusterBusyError`. The run directory's lock (runlock.py) is held throughout: another
    run there raises `RunLockedError` before any worker starts. A resume is checked against
    the run's definition first (definition.py: `ResumeRefused`, its global batch kept on
    another number of workers); ``allow_change`` names the keys it may change.
    ``callbacks`` and ``name`` go to `build_trainer` (a sweep's per-epoch reports to Ray
    Tune, and the name of its trial).
    """
    cfg = absolute_paths(cfg)
    with RunLock(run_dir(cfg.train)):  # one run at a time here (held already by ft-dist train)
        cfg = settle_on_driver(cfg, allow_change)
        return _fit_restarting(cfg, loop, group, callbacks, name)


def _fit_restarting(
    cfg: Any,
    loop: LoopFn | None,
    group: str | None,
    callbacks: Sequence[ray.train.UserCallback] = (),
    name: str | None = None,
) -> Path:
    connect(cfg.ray.address)
    restarts = 0
    while True:
        try:
            build_trainer(cfg, loop, group, callbacks, name).fit()
            return run_dir(cfg.train)
        except ray.train.WorkerGroupError as error:
            failures = error.worker_failures
            if not any(map(is_transient, failures.values())):
                raise permanent_error(failures) from error
            limit = cfg.ray.max_failures
            if 0 <= limit <= restarts:
                raise
            restarts += 1
            print(
                f"ft-dist: the worker group failed ({_first_failure(error)}); restart "
                f"{restarts} of {'unlimited' if limit < 0 else limit} from the newest checkpoint",
                file=sys.stderr,
                flush=True,
            )
        except ray.train.ControllerError as error:
            if is_worker_group_start_timeout(error.controller_failure):
                raise ClusterBusyError(busy_message(cfg)) from error
            raise


def is_transient(failure: BaseException) -> bool:
    """A fault another try can get past: Ray's own report of a worker, actor or node that
    went away (an exception class of Ray's), or a lost connection of a collective (a peer
    that died). Anything else was raised by the training code and comes back every try."""
    if type(failure).__module__.split(".")[0] == "ray":
        return True
    if isinstance(failure, (ConnectionError, TimeoutError, torch.distributed.DistError)):
        return True
    text = str(failure).lower()
    return isinstance(failure, RuntimeError) and any(words in text for words in PEER_LOST)


def permanent_error(failures: dict[int, BaseException]) -> BaseException:
    """The error to stop with when no failure is transient: a user error as itself, else a
    `WorkerError` naming the rank, the error and what to do."""
    rank, failure = min(failures.items())
    user = [f for f in failures.values() if isinstance(f, USER_ERRORS)]
    if user:
        return user[0]
    return WorkerError(
        f"rank {rank} raised {type(failure).__name__}: {first_line(failure)}; not retried: "
        "the training code raised it and would raise it again (its traceback is in the "
        "worker log above); fix the cause, then re-run the same command to resume from "
        "the newest checkpoint"
    )


def _first_failure(error: ray.train.WorkerGroupError) -> str:
    rank, failure = min(error.worker_failures.items())
    return f"rank {rank}: {type(failure).__name__}: {first_line(failure)}"


def start_up_limit(cfg: Any) -> int:
    """Ray's start-up retries (each waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s).

    DST Ensemble members queue for each other by design (ensemble.dst_ensemble), so they wait as
    long as it takes; a single run gives up after START_UP_ATTEMPTS tries.
    """
    from ft_dist.train.methods import ensemble_method

    return -1 if ensemble_method(cfg.ensemble.method).separate_runs else START_UP_ATTEMPTS - 1


def busy_message(cfg: Any) -> str:
    need = worker_resources(cfg.ray)
    free = {name: ray.available_resources().get(name, 0.0) for name in need}
    timeout = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    return (
        f"Ray found no room for train.num_workers={worker_count(cfg)} workers x "
        f"{format_resources(need)} in {START_UP_ATTEMPTS} tries of {timeout} s (free now: "
        f"{format_resources(free)}): the cluster "
        "is busy with other work; retry later, lower train.num_workers, or raise "
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    )
