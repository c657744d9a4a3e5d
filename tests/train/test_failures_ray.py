"""Failures on a real local Ray cluster: what is retried, what fails at once, and how long
a worker group may wait for room.

One 2-CPU cluster for the module, with Ray Train's start-up timeout cut to a few seconds
so a busy cluster is given up on quickly (each fit still costs ~25 s of Ray overhead).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import ray
import torch

from ft_dist.layout import checkpoints_dir, run_dir
from ft_dist.preflight import check_cluster
from ft_dist.private_api import autoscaler_max_resources
from ft_dist.train import worker
from ft_dist.train.checkpoint import SHARED_FILE, CheckpointError
from ft_dist.train.worker import ClusterBusyError, fit
from tests.train.conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

START_TIMEOUT_S = "4"
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import us


@pytest.fixture(scope="module")
def ray_cluster():
    saved = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = START_TIMEOUT_S  # Ray's processes
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", None)
    else:
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = saved


def test_more_workers_than_the_cluster_holds_fail_with_the_numbers(
    ray_cluster, tiny_mnist: Path, tmp_path: Path
) -> None:
    assert autoscaler_max_resources() is None  # a fixed cluster (and Ray's API still there)
    cfg = tiny_config(tiny_mnist, tmp_path, train={"num_workers": 64})
    with pytest.raises(ValueError) as refused:
        check_cluster(cfg)
    assert str(refused.value) == (
        "train.num_workers=64 workers x 1 CPU each do not fit the Ray cluster, which has "
        "1 node(s) with 2 CPU in all (room for 2); set train.num_workers=2 (or fewer), "
        "or add nodes"
    )
    gpu = tiny_config(tiny_mnist, tmp_path, ray={"use_gpu": True})
    with pytest.raises(ValueError, match=r"1 CPU, 1 GPU each .* \(room for 0\); lower ray"):
        check_cluster(gpu)
    check_cluster(tiny_config(tiny_mnist, tmp_path, train={"num_workers": 2}))


def missing_file_loop(starts: Path):
    def loop(cfg, session, tracker):
        with open(starts, "a") as record:
            record.write(f"{session.rank}\n")
        raise FileNotFoundError("no manifest for split 'val' at /nowhere (as the loop finds it)")

    return loop


def test_a_user_error_in_a_worker_fails_at_once_without_retries(
    ray_cluster, tiny_mnist: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_mnist, tmp_path, ray={"max_failures": 3})
    starts = tmp_path / "starts.txt"
    with pytest.raises(FileNotFoundError, match="no manifest for split 'val'"):
        fit(cfg, missing_file_loop(starts))
    assert starts.read_text().split() == ["0"]  # one try, not 1 + ray.max_failures


def failing_loop(starts: Path, error: BaseException):
    def loop(cfg, session, tracker):
        with open(starts, "a") as record:
            record.write(f"{session.rank}\n")
        raise error

    return loop


@pytest.mark.parametrize(
    "error",
    [ZeroDivisionError("integer division or modulo by zero"), PermissionError(13, "denied")],
    ids=["bug-in-a-model", "permission-denied"],
)
def test_an_error_of_the_training_code_stops_at_once_in_one_line(
    ray_cluster, tiny_mnist: Path, tmp_path: Path, error: BaseException
) -> None:
    cfg = tiny_config(tiny_mnist, tmp_path, ray={"max_failures": -1})  # would retry forever
    starts = tmp_path / "starts.txt"
    with pytest.raises(worker.WorkerError) as stopped:
        fit(cfg, failing_loop(starts, error))
    assert starts.read_text().split() == ["0"]  # one try
    message = str(stopped.value)
    assert message.startswith(f"rank 0 raised {type(error).__name__}: ") and "\n" not in message
    assert "not retried" in message and "re-run the same command to resume" in message


@ray.remote(num_cpus=2)
class Hog:
    """Holds every CPU of the cluster, as another job would."""

    def ready(self) -> bool:
        return True


def test_a_worker_group_that_never_gets_room_gives_up(
    ray_cluster, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "START_UP_ATTEMPTS", 2)
    hog = Hog.remote()
    ray.get(hog.ready.remote())
    started = time.monotonic()
    try:
        with pytest.raises(ClusterBusyError) as busy:
            fit(tiny_config(tiny_mnist, tmp_path))
    finally:
        ray.kill(hog)
    assert str(busy.value).startswith(
        f"Ray found no room for train.num_workers=1 workers x 1 CPU in 2 tries of "
        f"{START_TIMEOUT_S} s (free now: 0 CPU): the cluster is busy"
    )
    assert time.monotonic() - started < 120


def test_an_untrusted_checkpoint_fails_at_once_in_one_line(
    ray_cluster, tiny_mnist: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_mnist, tmp_path, ray={"max_failures": 3})
    planted = checkpoints_dir(run_dir(cfg.train)) / "000000004"
    planted.mkdir(parents=True)
    torch.save({"payload": Path("/etc/passwd")}, planted / SHARED_FILE)  # not plain data
    with pytest.raises(CheckpointError) as refused:
        fit(cfg)
    message = str(refused.value)
    assert message.startswith(
        f"no usable checkpoint to resume from: {planted / SHARED_FILE} is not a trusted "
        "ft_dist checkpoint"
    )
    assert "\n" not in message and "weights_only" not in message
