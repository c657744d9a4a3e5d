"""One `ft-dist train` on a local Ray cluster with a non-default entry of every table at once
(ensemble method, strategy, growth and drop criteria, optimizer, model family, data recipe),
then `ft-dist evaluate` and `ft-dist export` of its run: the tables' entries meet end to end
through the command line, as a user runs them. The default entries (single and DST Ensemble
runs, DDP, gradient growth, magnitude drop, SGD, small-cnn, the MNIST recipe) run through
Ray in tests/train/test_worker_ray.py, tests/orchestrate/test_dst_ensemble.py and
tests/launch/test_submit.py. Each entry of each table is trained, resumed and priced
in-process by the contract tests (tests/train/test_contracts.py and the files it names).
Every non-default strategy runs it once (the DeepSpeed and FSDP2 entries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ft_dist.cli import main
from ft_dist.layout import eval_report, run_dir
from tests.train.conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUILDER = Path(__file__).resolve().parents[1] / "models" / "attention_builder.py"
# Every strategy but the default (DDP, tests/train/test_worker_ray.py), at a non-default setting.
STRATEGY_SETTINGS = {"deepspeed": {"zero_stage": 1}, "fsdp2": {}}


def test_every_non_default_strategy_is_run_here() -> None:
    from ft_dist.train.config import TrainConfig
    from ft_dist.train.strategies import STRATEGIES

    default = TrainConfig.model_fields["strategy"].default
    assert set(STRATEGY_SETTINGS) == set(STRATEGIES) - {default}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_SETTINGS))
def test_an_entry_of_every_table_runs_through_ft_dist(
    strategy: str, tiny_mnist: Path, tmp_path: Path, capsys
):
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "runs",
        model={"name": f"{BUILDER}:build", "kwargs": {"dim": 16, "patch": 8}},
        data={"recipe": "cifar", "image_size": 32, "batch_size_per_worker": 16},
        sparsity={"growth": "random", "drop": "saliency", "update_every_steps": 2},
        optim={"name": "adamw", "lr": 0.002, "weight_decay": 0.05},
        train={
            "strategy": strategy,
            **STRATEGY_SETTINGS[strategy],
            "num_workers": 2,
            "run_name": "tables",
        },
        ensemble={
            "method": "edst",
            "num_members": 2,
            "edst": {"exploration_epochs": 1, "refinement_epochs": 1},
        },
    )
    config = tmp_path / "tables.yaml"
    values = cfg.model_dump(mode="json")
    values["train"].pop("epochs")  # EDST derives its epochs from its phases
    values["model"].pop("source")
    config.write_text(yaml.safe_dump(values))
    assert main(["train", str(config)]) == 0
    run = run_dir(cfg.train)
    # ft-dist's own output ends with the run directory; Ray forwards the workers' log
    # lines ("(RayTrainWorker pid=...) ...") to stdout whenever they arrive, so skip them.
    ours = [line for line in capsys.readouterr().out.splitlines() if not _ray_log(line)]
    assert ours[-1] == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "edst" and summary["world_size"] == 2
    assert summary["tickets"] == ["tickets/ticket_01.pt", "tickets/ticket_02.pt"]
    assert summary["sparse/num_updates"] >= 2

    assert main(["evaluate", str(run)]) == 0
    report = json.loads(eval_report(run).read_text())
    assert report["num_members"] == 2 and len(report["members"]) == 2
    assert report["ensemble"]["test"]["nll"] > 0
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "artifact.json").is_file()


def _ray_log(line: str) -> bool:
    """A worker's log line as Ray forwards it: "(Actor pid=...)", often in ANSI colour."""
    return line.lstrip("\x1b").lstrip("[0123456789;m").startswith("(")
