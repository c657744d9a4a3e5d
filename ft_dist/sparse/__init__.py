"""The dynamic-sparse-training engine. Knows nothing of Ray, data or ensembles.

from ft_dist.sparse import DynamicSparsity, SparsityConfig

Names are imported on first use, so that reading the criteria tables or the config
(`ft_dist.sparse.scores`, `ft_dist.sparse.config`) does not import torch (`ft-dist --help`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DynamicSparsity": "ft_dist.sparse.dynamic",
    "MaskMismatchError": "ft_dist.sparse.consistency",
    "SparsityConfig": "ft_dist.sparse.config",
    "UpdateSchedule": "ft_dist.sparse.schedule",
    "layer_densities": "ft_dist.sparse.allocation",
    "maskable_parameters": "ft_dist.sparse.allocation",
}
__all__ = [
    "DynamicSparsity",
    "MaskMismatchError",
    "SparsityConfig",
    "UpdateSchedule",
    "layer_densities",
    "maskable_parameters",
]

if TYPE_CHECKING:
    from ft_dist.sparse.allocation import layer_densities, maskable_parameters
    from ft_dist.sparse.config import SparsityConfig
    from ft_dist.sparse.consistency import MaskMismatchError
    from ft_dist.sparse.dynamic import DynamicSparsity
    from ft_dist.sparse.schedule import UpdateSchedule


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ft_dist.sparse' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
