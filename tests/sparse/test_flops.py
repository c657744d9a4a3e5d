"""FLOPs accounting (SPEC §8): per-layer counts, forward ratios, run prices, the CLI.

Tolerances for the published check figures: the papers give them to two significant
digits (RigL: ResNet-50 ERK 0.2 -> 0.42x, we expect 0.41 with the first conv masked too;
FreeTickets: f_S/f_D 0.34, EDST 0.61x, DST Ensemble 1.01x), so ±0.02 covers their
rounding; the DST Ensemble gets ±0.03 because it sums three members' rounding errors.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ft_dist.cli import main
from ft_dist.models import build_model
from ft_dist.models.config import ModelConfig
from ft_dist.sparse.flops import (
    allocated_flops_report,
    forward_flops,
    layer_flops,
    mean_over_steps,
    mean_training_flops_per_example,
    model_forward_flops,
    price_run,
    training_flops_per_example,
)
from ft_dist.train.ensemble_config import EDSTConfig, EnsembleConfig
from ft_dist.train.methods.pricing import price_method, price_paper_runs


def _meta_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes, in_channels, image_size)


def _erk_report(name: str, num_classes: int, image_size: int, density: float = 0.2):
    model = _meta_model(name, num_classes, 3, image_size)
    return allocated_flops_report(model, (3, image_size, image_size), density, "erk")


class TwoLayer(nn.Module):
    """conv 2->4 (3x3, stride 2, 8x8 -> 4x4), then a linear 64 -> 5, used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.flatten(torch.relu(self.norm(self.conv(x))), 1))
        return y + y @ torch.ones(5, 5)  # an unmasked matmul


def test_layer_flops_counts_each_layer_at_its_output_resolution():
    model = TwoLayer()
    flops = layer_flops(model, (2, 8, 8))
    # 2 FLOPs per multiply-add: conv has 4x4 outputs x 4 channels x (2*3*3) MACs.
    assert flops == {"conv.weight": 2 * 4 * 4 * 4 * 2 * 3 * 3, "fc.weight": 2 * 64 * 5}
    dense, sparse = forward_flops(model, (2, 8, 8), {"conv.weight": 0.5, "fc.weight": 0.1})
    # The whole model is counted: the unmasked 5x5 matmul stays dense.
    assert dense == flops["conv.weight"] + flops["fc.weight"] + 2 * 5 * 5
    assert sparse == pytest.approx(dense - 0.5 * flops["conv.weight"] - 0.9 * flops["fc.weight"])


def test_counting_restores_training_mode_and_matches_meta():
    model = build_model("small-cnn", 10, 1, 28)
    model.train()
    model.features[1].eval()
    real = layer_flops(model, (1, 28, 28))
    assert model.training and not model.features[1].training
    meta = layer_flops(_meta_model("small-cnn", 10, 1, 28), (1, 28, 28))
    assert real == meta
    assert not any(module._forward_hooks for module in model.modules())


def test_wrapped_model_names_have_no_wrapper_prefix():
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    assert layer_flops(Wrapper(TwoLayer()), (2, 8, 8)).keys() == {"conv.weight", "fc.weight"}


def test_dense_layers_count_at_full_density():
    model = _meta_model("wrn-16-4", 10, 3, 32)
    sparse = allocated_flops_report(model, (3, 32, 32), 0.2)
    kept = allocated_flops_report(model, (3, 32, 32), 0.2, dense_layers=["block1.0.conv2"])
    assert "block1.0.conv2.weight" not in {layer.name for layer in kept.layers}
    assert kept.dense_forward_flops == sparse.dense_forward_flops
    assert kept.sparse_forward_flops > sparse.sparse_forward_flops


def test_density_one_costs_exactly_dense():
    report = _erk_report("resnet18", 10, 32, density=1.0)
    assert report.forward_flops_ratio == 1.0
    runs = price_paper_runs(report.dense_forward_flops, report.sparse_forward_flops)
    assert runs["dst"].train_relative == pytest.approx(1.0)
    assert runs["static"].train_relative == 1.0


def test_resnet50_erk_check_figure():
    report = _erk_report("resnet50", 1000, 224)
    assert report.dense_forward_flops == pytest.approx(2 * 4.09e9, rel=0.01)  # 4.09 GMACs
    assert report.forward_flops_ratio == pytest.approx(0.41, abs=0.02)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_wrn_28_10_cifar_check_figures(num_classes):
    report = _erk_report("wrn-28-10", num_classes, 32)
    assert report.forward_flops_ratio == pytest.approx(0.34, abs=0.02)
    runs = price_paper_runs(report.dense_forward_flops, report.sparse_forward_flops)
    assert runs["edst"].total_epochs == 450 and runs["dst_ensemble"].total_epochs == 750
    assert runs["edst"].train_relative == pytest.approx(0.61, abs=0.02)
    assert runs["dst_ensemble"].train_relative == pytest.approx(1.0, abs=0.03)
    assert runs["edst"].inference_relative == pytest.approx(3 * report.forward_flops_ratio)


def test_training_step_formulas():
    dense, sparse = 10.0, 2.0
    assert training_flops_per_example(dense, sparse, dynamic=False) == 6.0
    assert training_flops_per_example(dense, sparse, "random", 100) == 6.0
    assert training_flops_per_example(dense, sparse, "momentum") == 14.0
    # RigL: one step in ΔT+1 computes the dense gradient.
    assert training_flops_per_example(dense, sparse, "gradient", 1) == (6 + 4 + 10) / 2
    assert training_flops_per_example(dense, sparse, "gradient", 1e9) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="update_every_steps"):
        training_flops_per_example(dense, sparse, "gradient", None)
    with pytest.raises(ValueError, match="growth"):
        training_flops_per_example(dense, sparse, "no-such-criterion", 10)


def test_stretches_of_steps_are_priced_at_their_own_forward_flops():
    assert mean_over_steps([(3, 1.0), (1, 5.0)]) == 2.0
    assert mean_over_steps([(0, 1.0)]) is None and mean_over_steps([]) is None
    # (steps, f_S, f_D): 2 steps at 2/10, then 2 at 1/4 (channels removed) -> the mean price
    segments = [(2, 2.0, 10.0), (2, 1.0, 4.0)]
    first, second = (training_flops_per_example(d, s, "gradient", 1) for _, s, d in segments)
    assert mean_training_flops_per_example(segments, "gradient", 1) == (first + second) / 2
    assert mean_training_flops_per_example([(0, 2.0, 10.0)], "gradient", 1) is None


def test_model_forward_flops_counts_the_configured_network_on_meta():
    cfg = ModelConfig(name="small-cnn", num_classes=10, in_channels=1, image_size=28)
    densities = {"features.4.weight": 0.5, "classifier.1.weight": 0.25}
    expected = forward_flops(build_model("small-cnn", 10, 1, 28), (1, 28, 28), densities)
    assert model_forward_flops(cfg, densities) == expected


def test_price_method_counts_epochs_and_members():
    edst_cfg = EnsembleConfig(
        method="edst",
        num_members=4,
        edst=EDSTConfig(exploration_epochs=30, refinement_epochs=70),
    )
    edst = price_method("edst", 10.0, 2.0, ensemble=edst_cfg, epochs=1, growth="random")
    assert edst.total_epochs == 30 + 4 * 70 and edst.reference_epochs == 100
    assert edst.train_relative == pytest.approx(6.0 * 310 / (30.0 * 100))
    assert edst.inference_flops == 8.0
    pdst_cfg = EnsembleConfig(method="dst_ensemble", num_members=3)
    pdst = price_method("dst_ensemble", 10.0, 2.0, ensemble=pdst_cfg, epochs=50, dynamic=False)
    assert pdst.total_epochs == 150 and pdst.train_relative == pytest.approx(3 * 0.2)
    single = price_method("single", 10.0, 10.0, ensemble=EnsembleConfig(), epochs=50, dynamic=False)
    assert single.train_relative == 1.0 and single.inference_relative == 1.0
    with pytest.raises(ValueError, match="ensemble.method"):
        price_method("bagging", 10.0, 2.0, ensemble=EnsembleConfig(), epochs=10)
    with pytest.raises(ValueError, match="edst section"):
        price_method("edst", 10.0, 2.0, ensemble=EnsembleConfig(), epochs=10, growth="random")
    with pytest.raises(ValueError, match="epochs and members must be >= 1"):
        price_run(10.0, 2.0, epochs_per_run=0, total_epochs=0, growth="random")


def test_cli_json(capsys):
    code = main(["flops", "--model", "small-cnn", "--density", "0.3", "--json", "--members", "2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image_size"] == 28 and result["in_channels"] == 1
    assert result["forward_flops_ratio"] == pytest.approx(
        result["sparse_forward_flops"] / result["dense_forward_flops"]
    )
    layer_sum = sum(layer["dense_flops"] for layer in result["layers"])
    assert 0 < layer_sum <= result["dense_forward_flops"]
    assert set(result["runs"]) == {"dense", "static", "dst", "edst", "dst_ensemble"}
    assert result["runs"]["dense"]["train_relative"] == 1.0
    assert result["runs"]["dst_ensemble"]["num_members"] == 2


def test_cli_table_and_user_errors(capsys):
    assert main(["flops", "--model", "wrn-16-4", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "block3.1.conv2.weight" in out and "forward FLOPs ratio" in out and "EDST" in out
    assert main(["flops", "--model", "small-cnn", "--density", "1.5"]) == 2
    assert "density" in capsys.readouterr().err
    assert main(["flops", "--model", "vgg16"]) == 2
    assert "unknown model" in capsys.readouterr().err
