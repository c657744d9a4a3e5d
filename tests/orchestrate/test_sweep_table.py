"""The results table (best first) and the plot, from run summaries and Tune's last reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ft_dist.config import save_config
from ft_dist.layout import run_dir, summary_path
from ft_dist.orchestrate.sweep_plan import SweepOptions, plan_sweep
from ft_dist.orchestrate.sweep_table import Reported, collect_rows, write_results
from tests.train.conftest import tiny_config


def _finish(cfg, nll: float) -> None:
    path = summary_path(run_dir(cfg.train))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"epochs": cfg.num_epochs, "metrics": {"val/nll": nll}}))


def test_rows_rank_finished_stopped_failed_and_unrun_trials(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    config = str(save_config(cfg, tmp_path / "cfg.yaml"))
    plan = plan_sweep(SweepOptions(config, ("optim.lr=0.01,0.02,0.05,0.1,0.2",)))
    by_lr = {t.values["optim.lr"]: t for t in plan.trials}
    _finish(by_lr[0.05].cfg, 0.9)
    _finish(by_lr[0.02].cfg, 0.4)
    reported = {
        by_lr[0.1].name: Reported({"val/nll": 2.5, "epoch": 1.0}),  # ASHA stopped it
        by_lr[0.2].name: Reported({}, error="WorkerError: rank 0 raised ..."),
    }
    rows = collect_rows(plan, reported)
    assert [r.values["optim.lr"] for r in rows] == [0.02, 0.05, 0.1, 0.01, 0.2]
    assert [r.status for r in rows[:3]] == ["finished", "finished", "stopped at epoch 1"]
    assert [r.metric for r in rows[:3]] == [0.4, 0.9, 2.5]
    assert {rows[3].status, rows[4].status} == {"not run", "failed: WorkerError: rank 0 raised ..."}
    assert rows[3].metric is None and rows[4].metric is None

    written = write_results(plan, rows)
    lines = list(csv.reader(written["csv"].open()))
    assert lines[0] == ["rank", "trial", "optim.lr", "val/nll", "status", "epochs", "run"]
    assert lines[1][:6] == ["1", by_lr[0.02].name, "0.02", "0.4000", "finished", "2"]
    assert lines[1][6] == str(by_lr[0.02].dir)
    markdown = written["markdown"].read_text().splitlines()
    assert markdown[0] == "| rank | trial | optim.lr | val/nll | status | epochs |"
    assert markdown[2].startswith(f"| 1 | {by_lr[0.02].name} | 0.02 | 0.4000 |")
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_ranks_highest_first_and_ensembles_average_their_members(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path / "data", tmp_path / "runs", ensemble={"method": "dst_ensemble", "num_members": 2}
    )
    config = str(save_config(cfg, tmp_path / "cfg.yaml"))
    plan = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",), metric="val/accuracy"))
    first, second = plan.trials
    for trial, accuracies in ((first, (0.5, 0.7)), (second, (0.9, None))):
        for run, accuracy in zip(trial.runs.values(), accuracies, strict=True):
            if accuracy is not None:
                path = summary_path(run_dir(run.train))
                path.parent.mkdir(parents=True, exist_ok=True)
                metrics = {"val/accuracy": accuracy}
                path.write_text(json.dumps({"epochs": run.num_epochs, "metrics": metrics}))
    rows = collect_rows(plan, {})
    assert [r.trial for r in rows] == [first.name, second.name]  # the half-run one last
    assert rows[0].metric == 0.6 and rows[0].status == "finished"
    assert rows[1].metric is None and rows[1].status == "1/2 finished"
