"""`ft-dist sweep` end to end on a local Ray cluster: a 2-trial grid crossed with a --space
draw, under ASHA, on the tiny MNIST slice; then the same command again, which resumes the
finished sweep without training anything. One scenario, to pay Ray's start-up once. W&B
is offline: each trial's W&B run is in the sweep's group."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import ray

from ft_dist.cli import main
from ft_dist.config import save_config
from ft_dist.layout import (
    checkpoints_dir,
    summary_path,
    sweep_plot_path,
    sweep_results_csv,
    sweep_results_md,
)
from ft_dist.tracking import read_logged_run
from tests.train.conftest import tiny_config, tiny_mnist  # noqa: F401 (fixture)
from tests.wandb_logs import wandb_offline_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _files(run: Path) -> dict[str, int]:
    """Every file of a run with its modification time (what a re-run must not touch); not
    W&B's debug logs, which its service may still be writing after the run ended."""
    return {
        str(p): p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and "lock" not in p.name and not p.name.startswith("debug")
    }


def test_asha_grid_and_space_sweep_prints_the_table_and_resumes(
    ray_cluster: None,
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "runs",
        train={"epochs": 4, "num_workers": 1, "run_name": "tiny", "log_every_steps": 8},
        ray={"max_failures": 0},
        tracking={"wandb": "offline"},
    )
    config = save_config(cfg, tmp_path / "cfg.yaml")
    space = tmp_path / "space.yaml"
    space.write_text("sparsity.density: {uniform: [0.15, 0.25]}\n")
    # Trials run one at a time, in grid order: lr 0.05 learns, lr 1e-5 does not; at the
    # first rung (epoch 1; the next is epoch 4) ASHA stops the second, whose validation NLL
    # is the worse. Its 3 epochs left outlast the few seconds a stop takes to reach the run.
    command = [
        "sweep", str(config), "optim.lr=0.05,0.00001", "--space", str(space),
        "--scheduler", "asha", "--reduction-factor", "4", "--max-concurrent", "1",
    ]  # fmt: skip
    assert main(command) == 0
    out = capsys.readouterr().out.splitlines()
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    assert out[-1] == str(sweep_dir)
    assert out[0] == "| rank | trial | optim.lr | sparsity.density | val/nll | status | epochs |"
    rows = list(csv.DictReader(sweep_results_csv(sweep_dir).open()))
    assert [row["optim.lr"] for row in rows] == ["0.05", "1e-05"]
    assert [row["status"] for row in rows] == ["finished", "stopped at epoch 1"]
    assert float(rows[0]["val/nll"]) < float(rows[1]["val/nll"])
    assert rows[0]["sparsity.density"] == rows[1]["sparsity.density"]  # one draw, both points
    assert 0.15 <= float(rows[0]["sparsity.density"]) <= 0.25
    good, stopped = Path(rows[0]["run"]), Path(rows[1]["run"])
    assert good.parent == stopped.parent == sweep_dir
    assert summary_path(good).is_file() and not summary_path(stopped).is_file()
    assert any(checkpoints_dir(stopped).iterdir())  # an ordinary run: resumable
    assert sweep_plot_path(sweep_dir).is_file() and sweep_results_md(sweep_dir).is_file()
    assert out[2].startswith(f"| 1 | {good.name} | 0.05 |")
    # W&B: one run per trial, named after it, all in the sweep's group (the --name).
    logged = {run: read_logged_run(run / "wandb") for run in (good, stopped)}
    assert {run.name: (w.name, w.group, w.mode) for run, w in logged.items()} == {
        run.name: (run.name, "tiny-sweep", "offline") for run in (good, stopped)
    }
    assert logged[good].run_id != logged[stopped].run_id
    assert wandb_offline_log(good, logged[good].run_id).stat().st_size > 0  # a real W&B run

    # The same command again: Tune's state is restored; nothing trains or is rewritten.
    before = {**_files(good), **_files(stopped)}
    assert main(command) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[-1] == str(sweep_dir)
    assert again[2:4] == out[2:4]
    assert {**_files(good), **_files(stopped)} == before
