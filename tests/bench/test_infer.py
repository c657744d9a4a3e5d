"""`ft-dist bench infer`: CSR Linear layers compute what the masked dense ones do."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ft_dist.bench.sparse_kernels import SparseLinear, with_sparse_linears
from ft_dist.cli import main
from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def test_sparse_linear_matches_the_masked_dense_layer() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        layer = nn.Linear(12, 7, bias=bias)
        with torch.no_grad():
            layer.weight.mul_(torch.rand(7, 12) < 0.3)
        sparse = SparseLinear.from_linear(layer)
        assert sparse.weight.layout == torch.sparse_csr
        for shape in ((5, 12), (2, 3, 12)):
            x = torch.randn(shape)
            torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-6)


def test_only_masked_sparse_linears_are_replaced() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, 28).eval()
    masks = DynamicSparsity(model, None, SparsityConfig(density=0.2)).masks
    assert bool(masks["classifier.3.weight"].all())  # ERK keeps the last layer dense
    sparse, replaced = with_sparse_linears(model, masks)
    assert replaced == ["classifier.1"]
    assert isinstance(sparse.classifier[1], SparseLinear) and isinstance(
        model.classifier[1], nn.Linear
    )
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-5)


def test_cli_reports_layers_and_model(capsys) -> None:
    argv = ["bench", "infer", "--features", "64", "--batch-size", "8", "--densities", "0.5", "0.1"]
    assert main([*argv, "--members", "2", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [round(row["density"], 1) for row in result["layers"]] == [0.5, 0.1]
    for row in result["layers"]:
        assert row["speedup"] == row["dense_ms"] / row["sparse_ms"] and row["max_abs_diff"] < 1e-4
    model = result["model"]
    assert model["members"] == 2 and model["sparse_layers"] == ["classifier.1"]
    assert model["max_abs_diff"] < 1e-5
    assert main([*argv, "--members", "1", "--repeats", "1"]) == 0
    assert "speedup" in capsys.readouterr().out
