"""Name -> builder table and `build_model`.

A plain dict of functions (no import-string registry): each builder takes
``(num_classes, in_channels, image_size)`` and returns a randomly initialised nn.Module.
Any "wrn-D-W" name is built even when it is not one of the listed examples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ft_dist.models.config import ModelConfig
from ft_dist.models.names import EXAMPLE_WRN_NAMES, check_model_name, parse_wrn_name
from ft_dist.models.resnet import build_resnet
from ft_dist.models.small_cnn import build_small_cnn
from ft_dist.models.wide_resnet import build_wide_resnet

ModelBuilder = Callable[[int, int, int], nn.Module]

MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "resnet18": partial(build_resnet, "resnet18"),
    "resnet34": partial(build_resnet, "resnet34"),
    "resnet50": partial(build_resnet, "resnet50"),
    **{name: partial(build_wide_resnet, name) for name in EXAMPLE_WRN_NAMES},
    "small-cnn": partial(build_small_cnn, "small-cnn"),
}


def build_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build the named model for `num_classes` outputs on `in_channels` x image_size^2 inputs.

    Use ``with torch.device("meta"): build_model(...)`` for a weightless copy (FLOPs counting).
    """
    check_model_name(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"model {name}: num_classes and in_channels must be >= 1, "
            f"got num_classes={num_classes}, in_channels={in_channels}"
        )
    builder = MODEL_BUILDERS.get(name)
    if builder is None and parse_wrn_name(name) is not None:
        builder = partial(build_wide_resnet, name)
    if builder is None:
        raise ValueError(f"no builder for model {name!r}")
    return builder(num_classes, in_channels, image_size)


def build_model_from_config(cfg: ModelConfig) -> nn.Module:
    """Build from a resolved ModelConfig (see `ModelConfig.resolved` for manifest defaults)."""
    missing = [
        key for key in ("num_classes", "in_channels", "image_size") if getattr(cfg, key) is None
    ]
    if missing:
        raise ValueError(
            f"model.{missing[0]} is not set: give it in the config or call "
            "ModelConfig.resolved(...) with the data manifest's values first"
        )
    return build_model(cfg.name, cfg.num_classes, cfg.in_channels, cfg.image_size)
