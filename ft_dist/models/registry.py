"""The model families: one table, `MODEL_FAMILIES`, and `build_model`.

Each family says which names it takes, how to check a name before any worker starts
(`verify`: the timm name exists, the module imports, the file and callable are there), and
how to build a randomly initialised ``nn.Module`` for ``(num_classes, in_channels,
image_size)`` with ``model.kwargs`` passed through. `--help`, docs and the contract tests
(tests/models/test_families.py) read this table; adding a family is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from ft_dist.models import builders
from ft_dist.models.config import ModelConfig
from ft_dist.models.names import (
    EXAMPLE_WRN_NAMES,
    FIXED_MODEL_NAMES,
    check_model_name,
    parse_wrn_name,
    split_spec,
)
from ft_dist.models.resnet import build_resnet
from ft_dist.models.small_cnn import build_small_cnn
from ft_dist.models.wide_resnet import build_wide_resnet

# (name, num_classes, in_channels, image_size, **kwargs) -> nn.Module
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    summary: str
    example: str  # a name of this family (docs, --help, contract tests)
    matches: Callable[[str], bool]
    build: Builder
    verify: Callable[[str], None] = lambda name: None


def _library(prefix: str) -> Callable[[str], bool]:
    return lambda name: (split_spec(name) or ("", ""))[0] == prefix


def _is_user_builder(name: str) -> bool:
    spec = split_spec(name)
    return spec is not None and spec[0] not in ("timm", "torchvision")


def _shipped(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs):
    if name == "small-cnn":
        return build_small_cnn(name, num_classes, in_channels, image_size, **kwargs)
    if parse_wrn_name(name) is not None:
        return build_wide_resnet(name, num_classes, in_channels, image_size, **kwargs)
    return build_resnet(name, num_classes, in_channels, image_size, **kwargs)


def _timm(name: str, *args, **kwargs):
    return builders.build_timm(name.removeprefix("timm:"), *args, **kwargs)


def _torchvision(name: str, *args, **kwargs):
    return builders.build_torchvision(name.removeprefix("torchvision:"), *args, **kwargs)


def _verify_user(name: str) -> None:
    builders.load_builder(name)


MODEL_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "shipped",
        "ResNet-18/34/50 (CIFAR stem for images <= 64 px), Wide-ResNet wrn-D-W, small-cnn",
        "small-cnn",
        lambda name: name in FIXED_MODEL_NAMES or parse_wrn_name(name) is not None,
        _shipped,
    ),
    ModelFamily(
        "timm",
        "timm:NAME, any timm model (num_classes, in_chans, img_size where it takes one)",
        "timm:vit_tiny_patch16_224",
        _library("timm"),
        _timm,
        lambda name: builders.check_timm_name(name.removeprefix("timm:")),
    ),
    ModelFamily(
        "torchvision",
        "torchvision:NAME, any torchvision classification model",
        "torchvision:resnet18",
        _library("torchvision"),
        _torchvision,
        lambda name: builders.check_torchvision_name(name.removeprefix("torchvision:")),
    ),
    ModelFamily(
        "builder",
        "package.module:callable or path/to/file.py:callable, called with num_classes, "
        "in_channels, image_size and model.kwargs",
        "path/to/file.py:build",
        _is_user_builder,
        builders.build_user,
        _verify_user,
    ),
)

# The shipped names (kept for callers that list them).
MODEL_BUILDERS: dict[str, Builder] = {
    name: partial(_shipped, name) for name in FIXED_MODEL_NAMES + EXAMPLE_WRN_NAMES
}


def model_family(name: str) -> ModelFamily:
    check_model_name(name)
    for family in MODEL_FAMILIES:
        if family.matches(name):
            return family
    raise ValueError(f"no model family builds {name!r}")


def verify_model_name(name: str) -> None:
    """The deeper check of preflight: the timm/torchvision name exists, the builder's module
    or file imports and has the callable."""
    model_family(name).verify(name)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    kwargs: dict[str, Any] | None = None,
    source: str | None = None,
) -> nn.Module:
    """Build the named model for `num_classes` outputs on `in_channels` x image_size^2 inputs.

    Use ``with torch.device("meta"): build_model(...)`` for a weightless copy (FLOPs counting).
    """
    family = model_family(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"model {name}: num_classes and in_channels must be >= 1, "
            f"got num_classes={num_classes}, in_channels={in_channels}"
        )
    extra = dict(kwargs or {})
    if source is not None:
        extra["source"] = source
    try:
        return family.build(name, num_classes, in_channels, image_size, **extra)
    except TypeError as error:
        text = str(error)
        if kwargs and ("unexpected keyword argument" in text or "multiple values" in text):
            raise ValueError(
                f"model.kwargs {sorted(kwargs)}: {name} does not take one of them ({error})"
            ) from None
        raise


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
    return build_model(
        cfg.name, cfg.num_classes, cfg.in_channels, cfg.image_size, cfg.kwargs, cfg.source
    )
