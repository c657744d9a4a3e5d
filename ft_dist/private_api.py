"""Every use of a dependency's private API, in one place.

Each has no public route in the versions we pin (pyproject.toml); tests/test_private_api.py
exercises every one, so an upgrade that moves or renames one fails there, by name, instead
of deep inside a run. Nothing else in ft_dist imports a private module of a dependency:
`grep -rn "_private\\|_internal\\|torch\\._\\|torch\\.utils\\._" ft_dist` finds only this file.
Private classes and attributes (torch's `_BatchNorm`, `_InstanceNorm`, `_ConvNd`, the compile
wrapper's `_orig_mod`, `numpy._core`) are named only here too. Torch is imported only where
used, so configs and data tools can import this module without it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`TorchDispatchMode`, imported on first use (so importing this module needs no torch):
    the documented extension point for seeing every ATen op (the FLOPs accounting attributes
    each matmul/conv to the parameter it reads, sparse/flops.py); torch documents it but
    keeps it in a private module."""
    if name == "TorchDispatchMode":
        from torch.utils._python_dispatch import TorchDispatchMode

        return TorchDispatchMode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def link_zero_optimizer_state(optimizer: Any) -> None:
    """Point each parameter's ZeRO fragment at optimizer state created before the first step
    (DeepSpeed links them lazily in its step, `_lazy_init_hp_params_optimizer_state`; its
    public `safe_set_full_optimizer_state` needs the link). No-op for ZeRO-0."""
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def batch_norm_base() -> type:
    """The common base of BatchNorm1d/2d/3d, SyncBatchNorm and the lazy variants
    (`nn.modules.batchnorm._BatchNorm`): torch exports no public type that matches them all,
    nor the subclasses libraries add (e.g. timm's BatchNormAct2d)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return _BatchNorm


def instance_norm_base() -> type:
    """The common base of InstanceNorm1d/2d/3d and the lazy variants
    (`nn.modules.instancenorm._InstanceNorm`; no public type matches them all)."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    return _InstanceNorm


def conv_base() -> type:
    """The common base of Conv1d/2d/3d and ConvTranspose1d/2d/3d (`nn.modules.conv._ConvNd`;
    no public type matches them all), which carries `groups`, `transposed` and the channel
    counts channel-level sparsity reads."""
    from torch.nn.modules.conv import _ConvNd

    return _ConvNd


# torch.compile(model) returns an OptimizedModule holding `model` in this undocumented
# attribute; the wrapper's parameter and state_dict names gain it as a prefix.
COMPILED_MODULE_ATTRIBUTE = "_orig_mod"
COMPILED_PARAMETER_PREFIX = COMPILED_MODULE_ATTRIBUTE + "."


def compiled_inner_module(model: Any) -> Any:
    """The module a `torch.compile(model)` wrapper wraps, or None for anything else."""
    return getattr(model, COMPILED_MODULE_ATTRIBUTE, None)


# Where numpy's pickles find `_reconstruct` (arrays) and `scalar`: numpy 1 wrote
# `numpy.core.multiarray`, numpy 2 writes its private `numpy._core.multiarray` (and keeps
# `numpy.core` as an alias, so both load). Allow-lists of pickle globals name both.
NUMPY_PICKLE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
