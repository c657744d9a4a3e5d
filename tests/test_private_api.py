"""One test per private dependency API in ft_dist/private_api.py: each fails, by name, when an
upgrade moves or renames what ft_dist relies on; and nothing outside private_api.py uses one."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ft_dist import private_api

PACKAGE = Path(__file__).resolve().parents[1] / "ft_dist"
PRIVATE = re.compile(
    r"^\s*(from|import)\s+(ray\._private|ray\.\S*\._internal|torch\._|torch\.utils\._|"
    r"deepspeed\.\S*\._)"
)


def test_no_private_import_outside_private_api() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "private_api.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.match(line)
    ]
    assert offenders == []


def test_torch_dispatch_mode_sees_aten_ops() -> None:
    seen = []

    class Record(private_api.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        torch.ones(2, 3) @ torch.ones(3, 4)
    assert torch.ops.aten.mm.default in seen


def test_ray_worker_group_start_timeout_class_is_where_we_import_it() -> None:
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    assert not private_api.is_worker_group_start_timeout(RuntimeError("other"))
    assert private_api.is_worker_group_start_timeout(
        WorkerGroupStartupTimeoutError.__new__(WorkerGroupStartupTimeoutError)
    )


def test_ray_autoscaler_limit_reader_exists() -> None:
    # Calling it needs a connected Ray (tests/train/test_failures_ray.py does); here: it is
    # still there with the name private_api.autoscaler_max_resources calls.
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config)


def test_dynamo_graph_counter_counts_a_compile() -> None:
    before = private_api.dynamo_graph_count()
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert private_api.dynamo_graph_count() == before + 1


def test_zero_wrapped_optimizer_unwraps_a_wrapper_and_passes_a_torch_optimizer() -> None:
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)

    class Wrapper:  # the shape of DeepSpeed's ZeRO optimizers: the torch one in .optimizer
        optimizer = sgd

    assert private_api.zero_wrapped_optimizer(sgd) is sgd
    assert private_api.zero_wrapped_optimizer(Wrapper()) is sgd
