"""Masked training under torch.compile: no recompiles at mask updates, invariants kept."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ft_dist.bench.compile import compile_model_, count_compiles, inactive_nonzero
from ft_dist.bench.step import check_invariants
from ft_dist.cli import main
from ft_dist.models import build_model
from ft_dist.private_api import COMPILED_PARAMETER_PREFIX
from ft_dist.sparse import DynamicSparsity, SparsityConfig


class Scaled(nn.Module):
    """Reads a Python float in forward: Dynamo specialises on it, so changing it recompiles."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def test_count_compiles_sees_a_recompile() -> None:
    """The counter the benchmark relies on does count a recompile (fails loudly on upgrade)."""
    torch._dynamo.reset()
    model = Scaled()
    compile_model_(model, backend="eager")
    x = torch.randn(2, 4)
    with count_compiles() as first:
        model(x)
    with count_compiles() as same:
        model(x)
    model.scale = 2.0
    with count_compiles() as changed:
        model(x)
    assert (first.graphs, same.graphs, changed.graphs) == (1, 0, 1)


def _train_with_updates(backend: str, num_updates: int = 4) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("small-cnn", 4, 1, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    config = SparsityConfig(density=0.2, growth="gradient", update_every_steps=2)
    sparsity = DynamicSparsity(model, optimizer, config)
    compile_model_(model, backend=backend)
    initial = {name: mask.clone() for name, mask in sparsity.masks.items()}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (8,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        sparsity.step()

    step()  # compiles forward and backward
    with count_compiles() as recompiles:
        for _ in range(2 * num_updates - 1):
            step()
            assert check_invariants(sparsity) == {
                "inactive_nonzero_weights": 0,
                "inactive_nonzero_optimizer_state": 0,
                "layers_with_wrong_counts": [],
            }
    assert sparsity.num_updates == num_updates
    assert any(not torch.equal(initial[n], sparsity.masks[n]) for n in sparsity.sparse_names)
    assert recompiles.graphs == 0
    # The compiled model computes with the masked weights: same output as an eager copy.
    eager = build_model("small-cnn", 4, 1, 8)
    eager.load_state_dict(
        {k.removeprefix(COMPILED_PARAMETER_PREFIX): v for k, v in model.state_dict().items()}
    )
    masks = {n: sparsity.masks[n] for n in sparsity.sparse_names}
    assert inactive_nonzero(dict(eager.named_parameters()), masks) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(images), eager(images), rtol=1e-4, atol=1e-5)


def test_mask_updates_do_not_recompile_aot_eager() -> None:
    # aot_eager runs Dynamo's guards and AOTAutograd exactly as inductor does, minus codegen.
    _train_with_updates("aot_eager")


@pytest.mark.slow
@pytest.mark.heavy
def test_mask_updates_do_not_recompile_inductor() -> None:
    _train_with_updates("inductor")


@pytest.mark.slow
@pytest.mark.heavy
def test_bench_step_compile_reports_zero_recompiles(capsys) -> None:
    argv = ["bench", "step", "--model", "small-cnn", "--in-channels", "1", "--image-size", "8"]
    argv += ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--updates", "3"]
    assert main([*argv, "--compile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compile"] is True
    assert result["recompiles"] == 0
    assert result["invariants_hold"] is True
