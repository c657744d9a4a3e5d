"""`ft-dist flops --config`: the repository's run configs priced as `ft-dist train` runs them.

Check-figure tolerances (SPEC §8, published to two significant digits): EDST 0.61x ± 0.02
covers the rounding of the published figure (we get 0.608 with f_S/f_D = 0.337); the DST
Ensemble 1.0x gets ± 0.03 because it sums three members' rounding (we get 1.013). Models are
built on the meta device, so each config is priced in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_dist.cli import main
from tests.data.helpers import make_split

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _price(capsys: pytest.CaptureFixture[str], config: str, *overrides: str) -> dict:
    assert main(["flops", "--config", str(CONFIGS / config), *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cifar100_edst_config_matches_check_figure(capsys):
    result = _price(capsys, "cifar100_edst.yaml", "model.num_classes=100")
    settings, run = result["settings"], result["run"]
    assert (settings["model"], settings["num_classes"]) == ("wrn-28-10", 100)
    # No CIFAR shards here: channels and size follow data.recipe: cifar, as in training.
    assert (settings["in_channels"], settings["image_size"]) == (3, 32)
    assert settings["shape_source"]["image_size"] == "data.recipe"
    assert settings["update_every_steps"] == 1000 and settings["global_batch"] == 2 * 64
    assert result["forward_flops_ratio"] == pytest.approx(0.34, abs=0.02)
    assert (run["method"], run["total_epochs"], run["reference_epochs"]) == ("edst", 450, 250)
    assert run["train_relative"] == pytest.approx(0.61, abs=0.02)
    assert run["inference_relative"] == pytest.approx(3 * result["forward_flops_ratio"])
    assert result["train_flops"] is None  # the split size is unknown without a manifest


def test_cifar100_dst_ensemble_config_matches_check_figure(capsys):
    run = _price(capsys, "cifar100_dst_ensemble.yaml", "model.num_classes=100")["run"]
    assert (run["method"], run["num_members"], run["total_epochs"]) == ("dst_ensemble", 3, 750)
    assert run["train_relative"] == pytest.approx(1.0, abs=0.03)


def test_imagenet_update_every_samples_becomes_steps_of_the_global_batch(capsys):
    config = str(CONFIGS / "imagenet_edst.yaml")
    # 128 per worker x 8 workers x 2 micro-batches = 2048; ΔT = 512,000 samples / 2048.
    argv = ["flops", "--config", config, "model.num_classes=1000", "train.grad_accum_steps=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "layer4.2.conv3.weight" in out and "3x224x224" in out
    assert "ΔT = 250 steps" in out and "global batch 2048" in out
    assert "t_ex=30 + 4 x t_re=70 = 310 epochs" in out and "one dense run of 100 epochs" in out


def test_shape_and_training_flops_from_a_local_manifest(capsys, tmp_path):
    make_split(tmp_path, "train", [150, 150], num_classes=4, size=28, mode="L", recipe="mnist")
    result = _price(capsys, "demo_edst.yaml", f"data.root={tmp_path}")
    settings, run = result["settings"], result["run"]
    assert [settings[key] for key in ("num_classes", "in_channels", "image_size")] == [4, 1, 28]
    assert set(settings["shape_source"].values()) == {"manifest"}
    # 300 samples, global batch 2 x 64 = 128: two full global batches per epoch.
    assert settings["train_samples"] == 300 and settings["examples_per_epoch"] == 256
    assert run["total_epochs"] == 3 + 3 * 2
    assert result["train_flops"] == pytest.approx(run["step_flops"] * 9 * 256)
    # A value set in the config wins over the manifest.
    assert (
        _price(capsys, "demo_edst.yaml", f"data.root={tmp_path}", "model.num_classes=7")[
            "settings"
        ]["num_classes"]
        == 7
    )


def test_dense_and_static_configs(capsys):
    shape = ["model.num_classes=10", "model.in_channels=1", "model.image_size=28"]
    dense = _price(capsys, "demo_dst.yaml", *shape, "sparsity.density=1.0")["run"]
    assert dense["train_relative"] == 1.0 and dense["inference_relative"] == 1.0
    static = _price(capsys, "demo_dst.yaml", *shape, "sparsity.update=none")
    ratio = static["forward_flops_ratio"]
    assert static["settings"]["dynamic"] is False
    assert static["run"]["train_relative"] == pytest.approx(ratio) and ratio < 0.5


def test_user_errors_name_the_fix(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert main(["flops", "--config", str(missing)]) == 2
    assert f"config file {missing} not found" in capsys.readouterr().err
    config = str(CONFIGS / "cifar100_edst.yaml")
    no_classes = [f"data.root={tmp_path}", "model.num_classes=null"]
    assert main(["flops", "--config", config, *no_classes]) == 2
    err = capsys.readouterr().err
    assert "model.num_classes=100" in err and "model.in_channels" not in err
    assert main(["flops", "--config", config, "--density", "0.1"]) == 2
    assert "--density" in capsys.readouterr().err
    assert main(["flops", "--config", config, "sparsity.density=2"]) == 2
    assert "sparsity.density" in capsys.readouterr().err
    assert main(["flops", "sparsity.density=0.1"]) == 2
    assert "need --config" in capsys.readouterr().err


def test_channel_level_config_says_removals_are_priced_by_the_run(capsys):
    shape = ["model.num_classes=10", "model.in_channels=1", "model.image_size=28"]
    channels = ["sparsity.channel_sparsity=0.5", "sparsity.channel_end_step=81"]
    plain = _price(capsys, "demo_edst.yaml", *shape)
    priced = _price(capsys, "demo_edst.yaml", *shape, *channels)
    assert priced["settings"]["channel_sparsity"] == 0.5
    assert priced["run"] == plain["run"]  # the config alone cannot know what goes
    assert main(["flops", "--config", str(CONFIGS / "demo_edst.yaml"), *shape, *channels]) == 0
    assert "summary.json and tickets price each stretch between removals" in (
        capsys.readouterr().out
    )
