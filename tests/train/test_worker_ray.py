"""Ray Train end to end on CPU: 2 DDP workers, a worker killed mid-run, resume, W&B files.

One local Ray cluster for the whole module (a Ray Train fit costs ~25 s of fixed overhead
here, so there are only three fits): an uninterrupted reference run, the same run with a
worker SIGKILLed after its first checkpoint, and a re-run of the killed run's name.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import ray
import torch

from ft_dist.layout import SUMMARY_FILE, run_dir, ticket_path
from ft_dist.tracking import read_logged_run
from ft_dist.train.checkpoint import SHARED_FILE
from ft_dist.train.loop import train
from ft_dist.train.worker import RAY_CHECKPOINTS, fit
from tests.train.conftest import tiny_config
from tests.train.test_loop import assert_same_training_state
from tests.wandb_logs import wandb_offline_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CANARY_KEY = "canary9876543210fedcba9876543210fedcba98"
VICTIM_RANK = 1
# Workers pickle the loop below by value: they need not import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster whose processes inherit a W&B key that must never leak,
    and a marker variable that tells this cluster's processes from any other's."""
    marker = f"FT_DIST_TEST_CLUSTER={tmp_path_factory.mktemp('cluster')}"
    keys = ("WANDB_API_KEY", "OMP_NUM_THREADS", "FT_DIST_TEST_CLUSTER")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(WANDB_API_KEY=CANARY_KEY, OMP_NUM_THREADS="1")
    os.environ["FT_DIST_TEST_CLUSTER"] = marker.split("=", 1)[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    assert len(processes_with(marker)) > 2  # the check below can see them
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    deadline = time.monotonic() + 15  # workers exit once their raylet is gone
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == [], "Ray left processes behind"


def processes_with(marker: str) -> list[int]:
    """Pids (other than this one) that inherited `marker` (NAME=value) in their environment;
    Ray renames its workers `ray::...`, so command lines cannot tell them apart."""
    needle, pids = f"{marker}\0".encode(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def ray_config(root: Path, out: Path, name: str, **tracking):
    return tiny_config(
        root,
        out,
        train={"epochs": 6, "num_workers": 2, "run_name": name, "keep_checkpoints": 2},
        ray={"max_failures": 2},
        tracking={"wandb": "disabled", "progress_every_s": 1.0, **tracking},
    )


class Victim:
    """The real session, except that on the first attempt rank 1 publishes its pid after
    the first checkpoint and waits there for the test to SIGKILL it from outside."""

    def __init__(self, session, flag_dir: Path) -> None:
        self.session, self.flag_dir = session, flag_dir
        self.rank, self.world_size = session.rank, session.world_size
        self.local_rank, self.device = session.local_rank, session.device

    def latest_checkpoint_dir(self):
        resume = self.session.latest_checkpoint_dir()
        with open(self.flag_dir / f"resume_rank{self.rank}.txt", "a") as record:
            record.write(f"{resume}\n")
        return resume

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.session.report(metrics, checkpoint_dir)
        pid_file = self.flag_dir / "victim.pid"
        if checkpoint_dir and self.rank == VICTIM_RANK and not pid_file.exists():
            partial = pid_file.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.rename(pid_file)  # the test never reads a half-written pid
            time.sleep(120)  # killed long before this ends
            raise RuntimeError("the test never killed the worker")


def killable_loop(flag_dir: Path):
    def loop(cfg, session, tracker):
        with open(flag_dir / "starts.txt", "a") as starts:
            starts.write(f"{session.rank}\n")
        return train(cfg, Victim(session, flag_dir), tracker)

    return loop


def kill_when_ready(flag_dir: Path, run: Path, killed: list[int]) -> None:
    """SIGKILL the victim once Ray has registered its first checkpoint (so the restart has
    something to resume from)."""
    pid_file, snapshot = flag_dir / "victim.pid", run / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if pid_file.exists() and snapshot.exists() and RAY_CHECKPOINTS in snapshot.read_text():
            break
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def newest_ray_checkpoint(run: Path) -> dict:
    root = run / RAY_CHECKPOINTS
    newest = max(root.iterdir(), key=lambda p: int(p.name))
    return torch.load(newest / SHARED_FILE, weights_only=True)


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_mnist: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = ray_config(tiny_mnist, out, "reference", wandb="offline", system_metrics=False)
    return fit(cfg)


@pytest.fixture(scope="module")
def killed(ray_cluster, tiny_mnist: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    flags = tmp_path_factory.mktemp("flags")
    cfg = ray_config(tiny_mnist, out, "killed")
    pids: list[int] = []
    killer = threading.Thread(
        target=kill_when_ready, args=(flags, run_dir(cfg.train), pids), daemon=True
    )
    killer.start()
    run = fit(cfg, killable_loop(flags))
    killer.join(timeout=5)
    return cfg, run, flags, pids


def test_killed_worker_restarts_from_checkpoint_and_matches_uninterrupted_run(reference, killed):
    _, run, flags, pids = killed
    assert len(pids) == 1, "the worker was never killed"
    starts = (flags / "starts.txt").read_text().split()
    assert starts.count(str(VICTIM_RANK)) == 2, f"worker group did not restart: {starts}"
    for rank in (0, 1):  # first attempt: fresh start; second: the newest complete checkpoint
        resumes = (flags / f"resume_rank{rank}.txt").read_text().split()
        assert resumes[0] == "None"
        assert resumes[1] == str(run / "checkpoints" / "000000004"), resumes
    for path in (ticket_path(reference, 1), ticket_path(run, 1)):
        assert path.is_file()
    expected = torch.load(ticket_path(reference, 1), weights_only=True)
    got = torch.load(ticket_path(run, 1), weights_only=True)
    for part in ("model", "masks"):
        assert expected[part].keys() == got[part].keys()
        for name, tensor in expected[part].items():
            assert torch.equal(tensor, got[part][name]), f"{part}.{name} differs after the restart"
    assert_same_training_state(newest_ray_checkpoint(reference), newest_ray_checkpoint(run))


def test_ray_keeps_num_to_keep_checkpoints_as_hard_links(reference):
    registered = sorted((reference / RAY_CHECKPOINTS).iterdir())
    assert [p.name for p in registered] == ["000000020", "000000024"]  # 6 epochs x 4 steps
    for ray_copy in registered:
        loop_copy = reference / "checkpoints" / ray_copy.name
        assert (ray_copy / SHARED_FILE).stat().st_ino == (loop_copy / SHARED_FILE).stat().st_ino
    assert (reference / "checkpoint_manager_snapshot.json").is_file()


def test_rerunning_a_finished_run_resumes_at_its_end(killed):
    cfg, run, _, _ = killed
    before = ticket_path(run, 1).stat().st_mtime_ns
    steps = (run / SUMMARY_FILE).read_text()
    assert fit(cfg) == run
    assert ticket_path(run, 1).stat().st_mtime_ns == before  # never overwritten
    assert '"steps": 24' in steps and '"steps": 24' in (run / SUMMARY_FILE).read_text()


def test_wandb_offline_run_logged_training_metrics_and_config(reference):
    logged = read_logged_run(reference / "wandb")
    assert (logged.name, logged.group) == ("reference", "reference")
    assert (logged.mode, logged.exit_code) == ("offline", 0)
    assert wandb_offline_log(reference, logged.run_id).stat().st_size > 0  # a real W&B run
    keys = set().union(*logged.history)
    for key in ("train/loss", "train/lr", "train/images_per_s", "train/flops", "val/accuracy"):
        assert key in keys, key
    for key in ("sparse/density", "sparse/dropped", "sparse/grown", "sparse/turnover"):
        assert key in keys, key
    assert "sparse/ever_active" in keys
    assert any(re.fullmatch(r"sparse/layer/.+/density", key) for key in keys)
    updates = [row["sparse/num_updates"] for row in logged.history if "sparse/num_updates" in row]
    assert updates and max(updates) > 0  # masks really moved during the logged run
    losses = [row["train/loss"] for row in logged.history if "train/loss" in row]
    assert len(losses) >= 2 and all(loss > 0 for loss in losses)
    assert logged.config["sparsity"]["density"] == 0.2
    assert logged.config["model"]["name"] == "small-cnn"
    assert "test/accuracy" in logged.summary and logged.summary["train/flops"] > 0


def test_api_key_in_the_environment_never_reaches_run_files(reference):
    leaks = [
        str(path)
        for path in reference.rglob("*")
        if path.is_file() and not path.is_symlink() and CANARY_KEY.encode() in path.read_bytes()
    ]
    assert leaks == []


class StopAfter:
    """Phase 1 of the damaged-checkpoint scenario, a Ctrl-C stand-in: stop the run (a user
    error, never retried) once its ``count``-th checkpoint is registered."""

    def __init__(self, session, count: int) -> None:
        self.session, self.count = session, count
        self.rank, self.world_size = session.rank, session.world_size
        self.local_rank, self.device = session.local_rank, session.device

    def latest_checkpoint_dir(self):
        return self.session.latest_checkpoint_dir()

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.session.report(metrics, checkpoint_dir)
        self.count -= checkpoint_dir is not None
        if self.count == 0:
            raise ValueError("stopped here by the test")


class LateVictim(Victim):
    """Like Victim, but rank 1 waits to be killed at its second checkpoint of the run."""

    reports = 0

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        if checkpoint_dir and not (self.flag_dir / "victim.pid").exists():
            LateVictim.reports += 1
            if LateVictim.reports < 2:
                self.session.report(metrics, checkpoint_dir)
                return
        super().report(metrics, checkpoint_dir)


def test_recovery_from_a_damaged_checkpoint_survives_a_later_worker_kill(
    reference, ray_cluster, tiny_mnist: Path, tmp_path: Path
):
    """Issue 18.1: stopped with three checkpoints, the newest damaged, re-run (falls back),
    a worker killed two checkpoints later: the restart resumes (Ray's run snapshot names
    only directories that exist) and the run ends bit-identical to the reference."""
    from tests.train.test_resume import flip_middle_bytes

    cfg = ray_config(tiny_mnist, tmp_path / "runs", "damaged")
    stop = lambda c, session, t: train(c, StopAfter(session, 3), t)  # noqa: E731
    with pytest.raises(ValueError, match="stopped here by the test"):
        fit(cfg, stop)
    run = run_dir(cfg.train)
    newest = run / "checkpoints" / "000000012"  # 4 steps an epoch, keep_checkpoints=2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000000008", newest.name]
    flip_middle_bytes(newest / SHARED_FILE)  # Ray's hard-linked copy is damaged too

    flags, pids = tmp_path / "flags", []
    flags.mkdir()

    def loop(c, session, tracker):
        with open(flags / "starts.txt", "a") as starts:
            starts.write(f"{session.rank}\n")
        return train(c, LateVictim(session, flags), tracker)

    killer = threading.Thread(target=kill_when_ready, args=(flags, run, pids), daemon=True)
    killer.start()
    assert fit(cfg, loop) == run
    killer.join(timeout=5)
    assert len(pids) == 1, "the worker was never killed"
    assert (flags / "starts.txt").read_text().split().count(str(VICTIM_RANK)) == 2
    resumes = (flags / "resume_rank0.txt").read_text().split()
    assert resumes == [str(newest), str(run / "checkpoints" / "000000016")], resumes
    snapshot = (run / "checkpoint_manager_snapshot.json").read_text()
    named = set(re.findall(rf"{RAY_CHECKPOINTS}/[0-9.]+", snapshot))
    assert named and all((run / name).is_dir() for name in named), named
    for part in ("model", "masks"):
        expected = torch.load(ticket_path(reference, 1), weights_only=True)[part]
        got = torch.load(ticket_path(run, 1), weights_only=True)[part]
        assert all(torch.equal(expected[k], got[k]) for k in expected), part
