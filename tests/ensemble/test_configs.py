"""The shipped ensemble configs load, and their budgets are the published ones (SPEC §5, §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("name", "method", "members", "epochs", "model"),
    [
        ("demo_edst.yaml", "edst", 3, 9, "small-cnn"),
        ("cifar100_edst.yaml", "edst", 3, 450, "wrn-28-10"),
        ("cifar100_dst_ensemble.yaml", "dst_ensemble", 3, 250, "wrn-28-10"),
        ("cifar10_edst.yaml", "edst", 3, 450, "wrn-28-10"),
        ("cifar10_dst_ensemble.yaml", "dst_ensemble", 3, 250, "wrn-28-10"),
        ("imagenet_edst.yaml", "edst", 4, 310, "resnet50"),
        ("imagenet_dst_ensemble.yaml", "dst_ensemble", 4, 100, "resnet50"),
    ],
)
def test_config_budgets(name: str, method: str, members: int, epochs: int, model: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.ensemble.method == method and cfg.ensemble.num_members == members
    assert cfg.num_epochs == epochs and cfg.model.name == model
    assert cfg.sparsity.density == 0.2 and cfg.sparsity.sparse_init == "erk"
    if method == "edst":
        assert cfg.ensemble.edst.explore_drop_fraction == 0.8


def test_published_cifar_and_imagenet_settings() -> None:
    cifar = load_config(CONFIGS / "cifar100_edst.yaml")
    global_batch = cifar.data.batch_size_per_worker * cifar.train.num_workers
    assert global_batch == 128 and cifar.sparsity.update_every_steps == 1000
    assert (cifar.optim.lr, cifar.optim.momentum, cifar.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert cifar.data.recipe == "cifar100"  # CIFAR-100's own normalisation statistics
    imagenet = load_config(CONFIGS / "imagenet_edst.yaml")
    assert imagenet.sparsity.update_every_samples == 4000 * 128  # ΔT = 4000 at batch 128
    assert imagenet.train.label_smoothing == 0.1 and imagenet.optim.warmup_epochs == 5
    # LR 0.1 at global batch 128 (README: -b 64 on 2 processes, --lr 0.1), linearly scaled.
    assert (imagenet.optim.lr, imagenet.optim.base_batch_size) == (0.1, 128)
    assert imagenet.optim.no_decay == "norm" and imagenet.optim.warmup_style == "per_epoch"
    assert (imagenet.sparsity.drop_schedule, imagenet.sparsity.drop_fraction_min) == (
        "cosine",
        0.005,
    )
    assert imagenet.sparsity.stop_step is None  # updates (and the decay) run to the end
    pdst = load_config(CONFIGS / "cifar100_dst_ensemble.yaml")
    assert pdst.optim.milestones == (0.5, 0.75) and pdst.optim.gamma == 0.1
    assert pdst.data.recipe == "cifar100"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar10_configs_are_the_cifar100_ones_on_cifar10(dataset: str) -> None:
    """The paper's CIFAR-10 table uses the same commands (README: --data cifar10): only the
    data, the recipe (CIFAR-10 statistics, reflect padding), classes and names differ."""
    from ft_dist.config import config_to_dict

    for method in ("edst", "dst_ensemble"):
        ours = config_to_dict(load_config(CONFIGS / f"{dataset}_{method}.yaml"))
        other = config_to_dict(load_config(CONFIGS / f"cifar100_{method}.yaml"))
        expected_recipe = {"cifar10": "cifar", "cifar100": "cifar100"}[dataset]
        assert ours["data"]["recipe"] == expected_recipe
        assert ours["model"]["num_classes"] == {"cifar10": 10, "cifar100": 100}[dataset]
        assert ours["data"]["root"] == f"data/{dataset}"
        for section in ("sparsity", "optim", "ensemble", "ray"):
            assert ours[section] == other[section], section
        assert ours["train"] | {"run_name": None} == other["train"] | {"run_name": None}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("cifar*.yaml")))
def test_cifar_configs_point_to_the_cifar_shard_writer(name: str) -> None:
    text = (CONFIGS / name).read_text()
    assert "ft-dist shards cifar --src cifar-" in text and "shards imagefolder" not in text
    assert f"ft-dist flops --config configs/{name}" in text


@pytest.mark.parametrize("name", ["demo_dst.yaml", "demo_edst.yaml"])
def test_demos_set_their_own_update_interval(name: str) -> None:
    # The library default ΔT (1000, the paper's) must not change the small demos.
    assert load_config(CONFIGS / name).sparsity.update_every_steps == 25


@pytest.mark.parametrize(("method", "relative"), [("edst", 0.61), ("dst_ensemble", 1.0)])
def test_cifar10_configs_priced_by_flops_config(method: str, relative: float, capsys) -> None:
    """`ft-dist flops --config configs/cifar10_*.yaml` prices the paper's CIFAR-10 runs:
    WRN-28-10 with 10 classes, ERK d = 0.2 (f_S/f_D = 0.340), EDST 0.612x and the DST
    Ensemble 1.019x the training FLOPs of one 250-epoch dense run (SPEC §8)."""
    import json

    from ft_dist.cli import main

    assert main(["flops", "--config", str(CONFIGS / f"cifar10_{method}.yaml"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["settings"]["model"], result["settings"]["num_classes"]) == ("wrn-28-10", 10)
    assert result["forward_flops_ratio"] == pytest.approx(0.34, abs=0.005)
    assert result["run"]["train_relative"] == pytest.approx(relative, abs=0.03)
