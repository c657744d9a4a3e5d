"""Models built by name: shipped ResNets, Wide-ResNets and a small CNN, timm:NAME,
torchvision:NAME, or a user's package.module:callable / path/to/file.py:callable.

from ft_dist.models import build_model
model = build_model("wrn-28-10", num_classes=100, in_channels=3, image_size=32)

Names are imported on first use, so that the config (`ft_dist.models.config`, which checks
a name's syntax in `ft_dist.models.names`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MODEL_BUILDERS": "ft_dist.models.registry",
    "MODEL_FAMILIES": "ft_dist.models.registry",
    "ModelConfig": "ft_dist.models.config",
    "build_model": "ft_dist.models.registry",
    "build_model_from_config": "ft_dist.models.registry",
    "check_model_name": "ft_dist.models.names",
    "known_model_names": "ft_dist.models.names",
    "model_config_from_meta": "ft_dist.models.config",
    "model_family": "ft_dist.models.registry",
    "verify_model_name": "ft_dist.models.registry",
    "with_builder_source": "ft_dist.models.config",
}
__all__ = [
    "MODEL_BUILDERS",
    "MODEL_FAMILIES",
    "ModelConfig",
    "build_model",
    "build_model_from_config",
    "check_model_name",
    "known_model_names",
    "model_config_from_meta",
    "model_family",
    "verify_model_name",
    "with_builder_source",
]

if TYPE_CHECKING:
    from ft_dist.models.config import ModelConfig, model_config_from_meta, with_builder_source
    from ft_dist.models.names import check_model_name, known_model_names
    from ft_dist.models.registry import (
        MODEL_BUILDERS,
        MODEL_FAMILIES,
        build_model,
        build_model_from_config,
        model_family,
        verify_model_name,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ft_dist.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
