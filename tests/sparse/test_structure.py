"""Channel groups from the dependency graph (sparse/structure.py) and the slim cut
(sparse/slim.py) on the shipped models, every model-family case, and torchvision/timm
models with concatenations, depthwise convs, LayerNorm and grouped convs: channels removed
by channel-level DST leave a masked network whose slim cut computes the same outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from ft_dist.models import build_model, build_model_from_config
from ft_dist.models.config import with_builder_source
from ft_dist.private_api import batch_norm_base
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.slim import dead_channels, slim_model
from ft_dist.sparse.structure import channel_structure
from tests.models.test_families import CASES
from tests.train.conftest import tiny_config


def family_model(case: str) -> nn.Module:
    name, kwargs, _ = CASES[case]
    cfg = tiny_config(Path("."), Path("."), model={"name": name, "kwargs": kwargs}).model
    cfg = cfg.resolved(num_classes=10, in_channels=1, image_size=28)
    return build_model_from_config(with_builder_source(cfg, Path(".")))


def torchvision_model(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(num_classes=10)


def timm_model(name: str, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, num_classes=10, **kwargs)


# name -> (builder, input shape)
MODELS = {
    "small-cnn": (lambda: build_model("small-cnn", 10, 1, 28), (1, 28, 28)),
    "wrn-16-2": (lambda: build_model("wrn-16-2", 10, 3, 32), (3, 32, 32)),
    "resnet18": (lambda: build_model("resnet18", 10, 3, 32), (3, 32, 32)),
    "resnet50": (lambda: build_model("resnet50", 10, 3, 16), (3, 16, 16)),
    "torchvision-mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), (3, 32, 32)),
    **{
        f"family-{case}": (lambda case=case: family_model(case), (1, 28, 28))
        for case in CASES
        if case != "file-builder"  # nn.MultiheadAttention + LayerNorm: nothing removable
    },
}
HEAVY_MODELS = {
    "resnet34": (lambda: build_model("resnet34", 10, 3, 32), (3, 32, 32)),
    "torchvision-densenet121": (lambda: torchvision_model("densenet121"), (3, 32, 32)),
    "timm-convnext_atto": (lambda: timm_model("convnext_atto"), (3, 32, 32)),
}


def remove_and_slim(model: nn.Module, shape: tuple, fraction: float = 0.4):
    """One DST update that removes ``fraction`` of the channels; (masked output, slim
    output, removed channels, engine)."""
    torch.manual_seed(0)
    config = SparsityConfig(
        density=0.3, update_every_steps=1, growth="random", channel_sparsity=fraction,
        channel_end_step=1, check_consistency=False,
    )  # fmt: skip
    sparsity = DynamicSparsity(model, None, config)
    images = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    model.train()
    model(images)  # the first forward traces the structure
    for module in model.modules():  # trained-looking statistics
        if isinstance(module, batch_norm_base()):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    sparsity.step()  # the update removes the channels
    model.eval()
    with torch.no_grad():
        expected = model(images)
    cut = slim_model(copy.deepcopy(model), sparsity.masks, torch.zeros(1, *shape))
    slim, removed = cut.model, cut.removed
    with torch.no_grad():
        got = slim(images)
    return expected, got, removed, sparsity, slim


def check_slims_exactly(name: str, builder, shape) -> None:
    model = builder()
    full = sum(p.numel() for p in model.parameters())
    expected, got, removed, sparsity, slim = remove_and_slim(model, shape)
    total = sparsity.channels.structure.num_channels
    assert sum(len(v) for v in removed.values()) == round(0.4 * total), name
    assert sum(p.numel() for p in slim.parameters()) < full
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removed_channels_slim_to_the_same_outputs(name: str) -> None:
    check_slims_exactly(name, *MODELS[name])


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(HEAVY_MODELS))
def test_removed_channels_slim_to_the_same_outputs_on_bigger_models(name: str) -> None:
    check_slims_exactly(name, *HEAVY_MODELS[name])


def test_groups_follow_residual_sums_norms_and_heads() -> None:
    structure = channel_structure(build_model("resnet18", 10, 3, 32), torch.zeros(1, 3, 32, 32))
    stem = structure.group("conv1")  # the residual stream of layer1: stem + both blocks
    names = {piece.name for piece in stem.slices}
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"} <= (
        names
    )
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.0.weight"} <= names  # readers
    inner = structure.group("layer1.0.conv1")  # inside a block: conv, BN, next conv's input
    assert {p.name for p in inner.slices} == {
        "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
        "layer1.0.conv2.weight",
    }  # fmt: skip
    assert ("fc", "the model's outputs (classes)") in structure.fixed

    vit = family_model("timm-vit")  # depth 1, 3 heads
    structure = channel_structure(vit, torch.zeros(1, 1, 28, 28))
    heads = structure.group("blocks.0.attn.heads")
    assert heads.kind == "heads" and heads.size == 3
    assert structure.group("blocks.0.mlp.fc1").size == 4 * 48
    assert any("LayerNorm" in why for _, why in structure.fixed)  # the residual stream


def test_heads_are_cut_whole() -> None:
    model = family_model("timm-vit")
    _, _, removed, sparsity, slim = remove_and_slim(model, (1, 28, 28), fraction=0.6)
    cut = len(removed.get("blocks.0.attn.heads", []))
    attention = slim.blocks[0].attn
    assert attention.num_heads == 3 - cut
    assert attention.qkv.out_features == 3 * attention.num_heads * attention.head_dim


def test_fixed_groups_say_why() -> None:
    grouped = channel_structure(torchvision_model("resnext50_32x4d"), torch.zeros(1, 3, 32, 32))
    assert any("grouped convolution" in why for _, why in grouped.fixed)
    assert grouped.groups  # the stem and the residual streams still qualify
    attention = channel_structure(family_model("file-builder"), torch.zeros(1, 1, 28, 28))
    assert not attention.groups
    reasons = " ".join(why for _, why in attention.fixed)
    assert "LayerNorm" in reasons or "MultiheadAttention" in reasons or "bare parameter" in reasons


def test_a_model_with_nothing_removable_is_refused_at_the_first_forward() -> None:
    model = family_model("file-builder")
    config = SparsityConfig(density=0.3, channel_sparsity=0.3, channel_end_step=5)
    DynamicSparsity(model, None, config)
    with pytest.raises(ValueError, match="no removable channel group"):
        model(torch.zeros(2, 1, 28, 28))


def test_dead_channels_of_an_unstructured_ticket_are_found() -> None:
    model = build_model("small-cnn", 10, 1, 28)
    masks = DynamicSparsity(model, None, SparsityConfig(density=0.2, seed=0)).masks
    structure = channel_structure(model, torch.zeros(1, 1, 28, 28))
    params = dict(model.named_parameters())
    assert dead_channels(structure, params, masks) == {}  # BatchNorm biases keep them alive
    with torch.no_grad():  # a channel whose filter, BatchNorm and readers are all zero
        masks["features.0.weight"][5] = False
        params["features.0.weight"][5] = 0
        params["features.1.weight"][5] = 0
        params["features.1.bias"][5] = 0
        masks["features.4.weight"][:, 5] = False
    assert dead_channels(structure, params, masks) == {"features.0": [5]}
