import math

import pytest
import torch
from torch import nn

from ft_dist.private_api import COMPILED_PARAMETER_PREFIX
from ft_dist.sparse import SparsityConfig
from ft_dist.sparse.allocation import (
    active_counts,
    layer_densities,
    maskable_parameters,
    strip_wrapper_prefixes,
)
from ft_dist.sparse.choices import SPARSE_INITS


def test_erk_solves_budget_and_is_proportional_to_raw_density():
    shapes = {"a": (64, 64, 3, 3), "b": (128, 64, 3, 3), "c": (128, 128, 3, 3)}
    densities = layer_densities(shapes, 0.2, "erk")
    assert all(d < 1 for d in densities.values())
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(densities[n] * sizes[n] for n in shapes)
    assert total == pytest.approx(0.2 * sum(sizes.values()))
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    ratios = {densities[n] / raw[n] for n in shapes}
    assert max(ratios) == pytest.approx(min(ratios))  # one epsilon for every layer


def test_erk_makes_small_layers_dense_and_resolves():
    # A tiny first conv (3 -> 8, 3x3) would get epsilon * raw > 1: it must become dense and the
    # remaining layers must absorb the rest of the budget.
    shapes = {"stem": (8, 3, 3, 3), "body": (256, 256, 3, 3), "head": (1000, 256)}
    densities = layer_densities(shapes, 0.1, "erk")
    assert densities["stem"] == 1.0 and densities["head"] < 1.0
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(densities[n] * sizes[n] for n in shapes) == pytest.approx(0.1 * sum(sizes.values()))
    assert all(0 < d <= 1 for d in densities.values())
    # The layers left in the solve still share one epsilon.
    raw_body = sum(shapes["body"]) / sizes["body"]
    raw_head = sum(shapes["head"]) / sizes["head"]
    assert densities["body"] / raw_body == pytest.approx(densities["head"] / raw_head)


def test_er_ignores_kernel_size_and_uniform_is_flat():
    shapes = {"a": (64, 64, 3, 3), "b": (64, 64, 1, 1)}
    er = layer_densities(shapes, 0.3, "er")
    assert er["a"] == pytest.approx(er["b"])
    assert layer_densities(shapes, 0.3, "uniform") == {"a": 0.3, "b": 0.3}


def test_exact_counts_match_global_density_within_one_weight_per_layer():
    shapes = {"a": (37, 19, 3, 3), "b": (101, 37, 3, 3), "c": (7, 101)}
    densities = layer_densities(shapes, 0.2, "erk")
    counts = active_counts(shapes, densities)
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(sum(counts.values()) - 0.2 * total) <= len(shapes)
    for name, shape in shapes.items():
        assert counts[name] == round(densities[name] * math.prod(shape))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_out_of_range_is_an_error(density):
    with pytest.raises(ValueError, match="density"):
        layer_densities({"a": (4, 4)}, density, "erk")


def test_maskable_parameters_cover_conv_and_linear_weights_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert list(maskable_parameters(model)) == ["0.weight", "3.weight"]
    assert list(maskable_parameters(model, dense_layers=["3"])) == ["0.weight"]
    with pytest.raises(ValueError, match="not sparse weights.*0.weight"):
        maskable_parameters(model, dense_layers=["1.weight"])


def test_wrapper_prefixes_are_stripped():
    compiled = f"module.{COMPILED_PARAMETER_PREFIX}layer1.0.conv1.weight"
    assert strip_wrapper_prefixes(compiled) == "layer1.0.conv1.weight"

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(3, 2)

    assert list(maskable_parameters(Wrapper())) == ["weight"]
    assert torch.is_tensor(maskable_parameters(Wrapper())["weight"])


@pytest.mark.parametrize("method", list(SPARSE_INITS))
def test_every_sparse_init_meets_the_budget(method: str) -> None:
    shapes = {"conv": (16, 3, 3, 3), "fc1": (64, 256), "fc2": (10, 64)}
    densities = layer_densities(shapes, 0.2, method)
    active = sum(densities[n] * math.prod(shape) for n, shape in shapes.items())
    assert active == pytest.approx(0.2 * sum(math.prod(shape) for shape in shapes.values()))
    assert all(0.0 < d <= 1.0 for d in densities.values())
    assert SparsityConfig(sparse_init=method).sparse_init == method


def test_an_unknown_sparse_init_lists_the_table_keys_in_order() -> None:
    message = "sparsity.sparse_init='erdos' is unknown; choose one of erk, er, uniform"
    with pytest.raises(ValueError, match=message):
        layer_densities({"a": (4, 4)}, 0.5, "erdos")
    with pytest.raises(ValueError, match=message):
        SparsityConfig(sparse_init="erdos")
