"""`ft-dist evaluate` on real bundled MNIST shards, tiny tickets and offline W&B."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from ft_dist.cli import main
from ft_dist.data.bundled import write_mnist
from ft_dist.data.config import DataConfig
from ft_dist.ensemble.data import locate_split, split_data
from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.tracking import read_logged_run
from tests.data.formats import write_cifar_c
from tests.wandb_logs import wandb_offline_log


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, shard_size=300)
    return root


def _write_run(run_dir: Path, data_root: Path, num_members: int) -> None:
    for member in range(1, num_members + 1):
        torch.manual_seed(member)
        model = build_model("small-cnn", 10, 1, 28)
        sparsity = DynamicSparsity(model, None, SparsityConfig(density=0.2, seed=member))
        meta = {
            "model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
            "member": member, "phase": member, "epoch": member, "val_accuracy": 0.1,
            "density": 0.2, "train_flops": 1e12 * member, "run_name": "cli-run",
        }  # fmt: skip
        path = run_dir / "tickets" / f"ticket_{member:02d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "masks": sparsity.masks, "meta": meta}, path)
    config = {
        "data": {"root": str(data_root), "batch_size_per_worker": 64, "loader_workers": 0},
        "tracking": {"wandb": "auto", "project": "ft-dist-test"},
        "train": {"run_name": "cli-run"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_split_data_reads_every_sample_once_raw(mnist_root: Path) -> None:
    cfg = DataConfig(root=str(mnist_root))
    data = split_data(cfg, "test", batch_size=128, num_workers=2)
    images, labels = zip(*data.source(), strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (1000, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
    assert Counter(labels.tolist()) == {digit: 100 for digit in range(10)}
    assert data.normalization.mean == (0.1307,) and data.sample_shape == (1, 28, 28)
    cached = data.cached()
    assert cached.source() is cached.source()
    assert sum(len(labels) for _, labels in cached.source()) == 1000
    assert data.cached(max_bytes=1000) is data
    ood = split_data(cfg, "ood", labeled=False, batch_size=500)
    ood_labels = torch.cat([labels for _, labels in ood.source()])
    assert ood_labels.numel() == 1000 and bool((ood_labels == -1).all())
    with pytest.raises(ValueError, match="no labels"):
        split_data(cfg, "ood")


def test_locate_split(mnist_root: Path) -> None:
    assert locate_split(str(mnist_root / "ood"), "x") == (str(mnist_root), "ood")
    assert locate_split(str(mnist_root), "x") == (str(mnist_root), "ood")
    assert locate_split("ood", "root") == ("root", "ood")
    with pytest.raises(FileNotFoundError, match="--ood"):
        locate_split(str(mnist_root / "nope"), "root")


@pytest.mark.slow
def test_cli_evaluate_end_to_end(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=2)
    argv = ["evaluate", str(run_dir), "--ood", "ood", "--corruptions", "contrast", "jpeg"]
    code = main([*argv, "--severities", "2", "--batch-size", "250"])
    assert code == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == str(run_dir / "eval" / "report.json")
    report = json.loads(Path(last_line).read_text())
    assert report["num_test_samples"] == 1000 and report["num_ood_samples"] == 1000
    assert set(report["corruptions"]["ensemble"]) == {"contrast", "jpeg"}
    assert (run_dir / "eval" / "plots" / "reliability.png").is_file()
    logged = read_logged_run(run_dir / "eval" / "wandb")
    assert wandb_offline_log(run_dir / "eval", logged.run_id).stat().st_size > 0  # a real W&B run
    assert logged.name == "cli-run-eval" and logged.group == "cli-run"
    assert logged.summary["ensemble/nll"] == pytest.approx(report["ensemble"]["test"]["nll"])


def test_cli_evaluate_user_errors(mnist_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no such run" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=1)
    assert main(["evaluate", str(run_dir), "--corruptions", "fog", "--no-wandb"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_an_ensemble_with_fewer_tickets_than_planned_is_refused_unless_allowed(
    mnist_root: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=1)  # an EDST run of M = 3 after phase 1
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["ensemble"] = {"method": "edst", "num_members": 3}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", str(run_dir), "--no-wandb"]) == 2
    err = capsys.readouterr().err
    assert "found 1 of the 3 tickets its config plans" in err and "--allow-incomplete" in err
    assert main(["evaluate", str(run_dir), "--no-wandb", "--allow-incomplete"]) == 0
    assert "evaluating 1 of 3 planned tickets" in capsys.readouterr().err
    # One member run of a DST Ensemble plans its own ticket only.
    config["ensemble"] = {"method": "pdst", "num_members": 3}  # an old run's name
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", str(run_dir), "--no-wandb"]) == 0


def test_cli_evaluate_corruption_files_and_several_ood_sets(
    mnist_root: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=2)
    cifar_c = tmp_path / "CIFAR-10-C"
    write_cifar_c(cifar_c, ("fog", "snow"), per_severity=6)  # 32 px RGB, labels 0..4
    argv = ["evaluate", str(run_dir), "--corruptions-from", str(cifar_c), "--no-wandb"]
    argv += ["--corruption-limit", "4", "--ood", "ood", "--ood", "gaussian"]
    assert main([*argv, "--batch-size", "300"]) == 0
    report = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    corruptions = report["corruptions"]
    assert corruptions["source"] == f"cifar-c {cifar_c}" and corruptions["severities"] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert corruptions["pooled"]["num_samples"] == 2 * 5 * 4  # pooled over every cell
    assert set(corruptions["ensemble"]) == {"fog", "snow"} and len(corruptions["members"]) == 2
    assert set(corruptions["ensemble"]["snow"]) == {"1", "2", "3", "4", "5"}
    assert report["ood_samples"] == {"ood": 1000, "gaussian": 1000}
    ensemble = report["ensemble"]
    assert ensemble["ood"] == ensemble["ood_sets"]["ood"]  # the first set, as before
    assert 0.0 <= ensemble["ood_sets"]["gaussian"]["auroc_entropy"] <= 1.0
    markdown = (run_dir / "eval" / "report.md").read_text()
    assert "Pooled: the predictions of every corruption x severity as one set of 40" in markdown
    header = (
        "| model | AUROC (max-prob) | AUPR-in (max-prob) | AUPR-out (max-prob) | FPR95 (max-prob)"
    )
    assert markdown.count(header) == 2  # one table per OoD set
    assert "**ood** (1000 inputs)" in markdown and "**gaussian** (1000 inputs)" in markdown
    assert "| snow | 5 |" in markdown
    # cA / cNLL / cECE beside the pooled figures, raw and temperature-scaled (val split).
    assert "| model | cA | cNLL | cECE |" in markdown
    assert "| model | cA | calibrated cNLL | calibrated cECE |" in markdown
    calibrated = corruptions["calibrated"]
    assert calibrated["temperatures"] == [
        row["calibrated"]["temperature"] for row in [*report["members"], ensemble]
    ]
    assert calibrated["mean"]["ensemble"]["accuracy"] == pytest.approx(
        corruptions["mean"]["ensemble"]["accuracy"]
    )


def test_cli_evaluate_corruption_file_errors(mnist_root: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=1)
    cifar_c = tmp_path / "c"
    write_cifar_c(cifar_c, ("fog",), per_severity=2)
    fog = cifar_c / "fog.npy"
    fog.write_bytes(fog.read_bytes()[:500])
    assert main(["evaluate", str(run_dir), "--corruptions-from", str(cifar_c), "--no-wandb"]) == 2
    assert "fog.npy: cannot read it as .npy" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--corruption-limit", "3", "--no-wandb"]) == 2
    assert "--corruptions-from DIR only" in capsys.readouterr().err


def test_ece_bins_and_calibration_split_options(mnist_root: Path, tmp_path: Path, capsys) -> None:
    from ft_dist.ensemble.run_eval import ece_bins

    assert ece_bins({"data": {}}, None) == 15
    assert ece_bins({"sparsity": {"compat": "official-cifar"}}, None) == 14
    assert ece_bins({"sparsity": {"compat": "none"}}, None) == 15
    assert ece_bins({"sparsity": {"compat": "official-cifar"}}, 10) == 10
    run_dir = tmp_path / "run"
    _write_run(run_dir, mnist_root, num_members=2)
    argv = ["evaluate", str(run_dir), "--no-wandb", "--batch-size", "500"]
    assert main([*argv, "--calibration-split", "test"]) == 2
    assert "is the test split" in capsys.readouterr().err
    assert main([*argv, "--ece-bins", "zero"]) == 2
    assert "--ece-bins" in capsys.readouterr().err
    assert main([*argv, "--calibration-split", "none", "--ece-bins", "official"]) == 0
    report = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert report["ece_bins"] == 14 and "calibrated" not in report["ensemble"]
    assert report["data"]["calibration_split"] is None
    assert len(report["reliability"]["member_1"]["counts"]) == 14
    markdown = (run_dir / "eval" / "report.md").read_text()
    assert "14 equal-width bins (the official FreeTickets binning" in markdown
    assert main(argv) == 0  # default: the bundled data's 'val' split
    report = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert report["data"]["calibration_split"] == "val" and report["num_val_samples"] == 500
    assert report["ensemble"]["calibrated"]["temperature"] > 0
