"""Every use of a dependency's private API, in one place.

Each has no public route in the versions we pin (pyproject.toml); tests/test_private_api.py
exercises every one, so an upgrade that moves or renames one fails there, by name, instead
of deep inside a run. Nothing else in ft_dist imports a private module of a dependency:
`grep -rn "_private\\|_internal\\|torch\\._\\|torch\\.utils\\._" ft_dist` finds only this file.
"""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: F401  (re-exported)

# TorchDispatchMode: the documented extension point for seeing every ATen op (the FLOPs
# accounting attributes each matmul/conv to the parameter it reads, sparse/flops.py);
# torch documents it but keeps it in a private module.


def is_worker_group_start_timeout(failure: BaseException | None) -> bool:
    """Ray Train's worker group never got its resources (`ControllerError.controller_failure`
    is this private class; Ray exports no public type for it)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(failure, WorkerGroupStartupTimeoutError)


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most resources the cluster's autoscaler may bring up, or None without one.

    Ray has no public API for this; Ray Train's own start-up check reads the same value
    (`ray._private.state`, worker_group.py). Needs a connected Ray.
    """
    from ray._private.state import state

    limits = state.get_max_resources_from_cluster_config()
    return {name: float(value) for name, value in limits.items()} if limits else None


def dynamo_graph_count() -> int:
    """Graphs Dynamo has compiled so far in this process (torch.compile has no public
    counter; bench/compile.py reads the difference around a block)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def zero_wrapped_optimizer(optimizer: Any) -> Any:
    """The torch optimizer a DeepSpeed ZeRO optimizer wraps (`.optimizer`, an undocumented
    attribute; DeepSpeed's public state_dict holds objects `weights_only` loading refuses)."""
    import torch

    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer
