"""The dynamic-sparse-training engine. Knows nothing of Ray, data or ensembles.

from ft_dist.sparse import DynamicSparsity, SparsityConfig
"""

from ft_dist.sparse.allocation import layer_densities, maskable_parameters
from ft_dist.sparse.config import SparsityConfig
from ft_dist.sparse.consistency import MaskMismatchError
from ft_dist.sparse.dynamic import DynamicSparsity
from ft_dist.sparse.schedule import UpdateSchedule

__all__ = [
    "DynamicSparsity",
    "MaskMismatchError",
    "SparsityConfig",
    "UpdateSchedule",
    "layer_densities",
    "maskable_parameters",
]
