"""Models: torchvision ResNets, Wide-ResNets and a small CNN, built by name.

from ft_dist.models import build_model
model = build_model("wrn-28-10", num_classes=100, in_channels=3, image_size=32)
"""

from ft_dist.models.config import ModelConfig
from ft_dist.models.names import check_model_name, known_model_names
from ft_dist.models.registry import MODEL_BUILDERS, build_model, build_model_from_config

__all__ = [
    "MODEL_BUILDERS",
    "ModelConfig",
    "build_model",
    "build_model_from_config",
    "check_model_name",
    "known_model_names",
]
