"""Models built by name: shipped ResNets, Wide-ResNets and a small CNN, timm:NAME,
torchvision:NAME, or a user's package.module:callable / path/to/file.py:callable.

from ft_dist.models import build_model
model = build_model("wrn-28-10", num_classes=100, in_channels=3, image_size=32)
"""

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
