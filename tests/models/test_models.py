"""Model builders: names, output shapes, stems and known parameter counts."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ft_dist.models import (
    MODEL_BUILDERS,
    ModelConfig,
    build_model,
    build_model_from_config,
    check_model_name,
)


def _num_params(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "image_size"),
    [
        ("small-cnn", 10, 1, 28),
        ("small-cnn", 7, 3, 32),
        ("wrn-16-4", 10, 3, 32),
        ("wrn-10-1", 5, 1, 28),
        ("resnet18", 10, 3, 32),
    ],
)
def test_real_forward_gives_logits_per_class(name, num_classes, in_channels, image_size):
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels, image_size)
    logits = model(torch.randn(2, in_channels, image_size, image_size))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "image_size"),
    [
        ("resnet18", 1000, 3, 224),
        ("resnet34", 10, 1, 96),
        ("resnet50", 1000, 3, 224),
        ("resnet50", 100, 3, 64),
        ("wrn-28-10", 100, 3, 32),
    ],
)
def test_large_models_shapes_on_meta(name, num_classes, in_channels, image_size):
    with torch.device("meta"):
        model = build_model(name, num_classes, in_channels, image_size)
        logits = model(torch.empty(3, in_channels, image_size, image_size))
    assert logits.shape == (3, num_classes)


def test_resnet_uses_cifar_stem_for_small_images_only():
    with torch.device("meta"):
        small = build_model("resnet18", 10, 1, 32)
        large = build_model("resnet18", 10, 1, 224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert small.conv1.in_channels == large.conv1.in_channels == 1


def test_known_parameter_counts():
    """WRN-28-10 on CIFAR-10 has 36.5M parameters (Zagoruyko & Komodakis, Table 1)."""
    with torch.device("meta"):
        wrn = build_model("wrn-28-10", 10, 3, 32)
        resnet50 = build_model("resnet50", 1000, 3, 224)
    assert abs(_num_params(wrn) / 1e6 - 36.5) < 0.05
    assert abs(_num_params(resnet50) / 1e6 - 25.557) < 0.001


def test_builder_table_has_the_contract_names():
    for name in ("resnet18", "resnet34", "resnet50", "wrn-28-10", "wrn-16-4", "small-cnn"):
        assert name in MODEL_BUILDERS
    with torch.device("meta"):
        for name, builder in MODEL_BUILDERS.items():
            in_channels = 1 if name == "small-cnn" else 3
            out = builder(4, in_channels, 32)(torch.empty(1, in_channels, 32, 32))
            assert out.shape == (1, 4), name


@pytest.mark.parametrize("name", ["resnet101", "wrn-27-10", "wrn-28", "cnn"])
def test_unknown_names_raise_value_error_listing_choices(name):
    with pytest.raises(ValueError, match="wrn"):
        build_model(name, 10, 3, 32)
    with pytest.raises(ValueError):
        check_model_name(name)


def test_too_small_images_raise_value_error():
    with pytest.raises(ValueError, match="image_size"):
        build_model("wrn-16-4", 10, 3, 4)
    with pytest.raises(ValueError, match="image_size"):
        build_model("small-cnn", 10, 1, 2)


def test_model_config_validates_and_resolves():
    cfg = ModelConfig(name="small-cnn", num_classes=None, in_channels=3)
    resolved = cfg.resolved(num_classes=10, in_channels=1, image_size=28)
    # Only the fields left as None are taken from the manifest.
    assert (resolved.num_classes, resolved.in_channels, resolved.image_size) == (10, 3, 28)
    model = build_model_from_config(resolved)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="model.num_classes"):
        build_model_from_config(cfg)
    with pytest.raises(ValidationError, match="unknown model"):
        ModelConfig(name="resnet-50")
    with pytest.raises(ValidationError, match="depth"):
        ModelConfig.model_validate({"name": "wrn-20-2"})
    with pytest.raises(ValidationError):
        ModelConfig(name="small-cnn", widht=3)
    with pytest.raises(ValidationError):
        ModelConfig(name="small-cnn", num_classes=0)
