"""Which worker failures a restart can get past (worker.is_transient), without Ray: a lost
worker, node or connection is retried; an error the training code raised is not."""

from __future__ import annotations

import pytest
import ray.exceptions
import torch.distributed

from ft_dist.train.worker import WorkerError, is_transient, permanent_error


@pytest.mark.parametrize(
    "failure",
    [
        ray.exceptions.RayActorError(),  # Ray saw the worker's actor die
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("store get timed out"),
        torch.distributed.DistBackendError("NCCL communicator was aborted"),
        RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_lost_workers_and_connections_are_transient(failure: BaseException) -> None:
    assert is_transient(failure)


@pytest.mark.parametrize(
    "failure",
    [
        ZeroDivisionError("integer division or modulo by zero"),
        PermissionError(13, "Permission denied", "/runs/x/checkpoints"),
        OSError(5, "Input/output error"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"),
        ValueError("checkpoint does not belong to this run"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_errors_of_the_training_code_are_not(failure: BaseException) -> None:
    assert not is_transient(failure)


def test_the_error_to_stop_with() -> None:
    user = FileNotFoundError("no manifest for split 'val'")
    assert permanent_error({1: ZeroDivisionError("x"), 0: user}) is user  # our checks' line
    error = permanent_error({1: RuntimeError("b"), 0: ZeroDivisionError("division\nby zero")})
    assert isinstance(error, WorkerError)
    assert str(error).startswith("rank 0 raised ZeroDivisionError: division; not retried")
