"""`ft-dist train` on a run that has a checkpoint: a changed definition is refused in one
line before any check or Ray starts; `--allow-change KEY` lets it resume and is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from ft_dist import preflight
from ft_dist.cli import main
from ft_dist.config import load_config
from ft_dist.layout import checkpoint_dir, checkpoints_dir, run_dir
from ft_dist.train import worker
from ft_dist.train.checkpoint import META_FILE
from ft_dist.train.definition import read_record, run_definition
from tests.cli.test_train_errors import write_config


def started_run(config: Path, *overrides: str) -> Path:
    """The run of ``config`` as its first start recorded it, with a checkpoint at step 8."""
    cfg = worker.absolute_paths(load_config(config, overrides))
    path = checkpoint_dir(checkpoints_dir(run_dir(cfg.train)), 8)
    path.mkdir(parents=True)
    meta = {"step": 8, "world_size": 1, "definition": run_definition(cfg, 1)}
    (path / META_FILE).write_text(json.dumps(meta))
    return run_dir(cfg.train)


def test_a_changed_lr_is_refused_in_one_line_before_ray(
    tmp_path: Path, dataset: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "check_inputs", lambda cfg: pytest.fail("checked inputs"))
    config = write_config(tmp_path, dataset)
    run = started_run(config, "optim.lr=0.05")
    assert main(["train", str(config), "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and not ray.is_initialized()
    assert err == (
        f"ft-dist train: error: {run} (checkpoint step 8) was started with other values: "
        "optim.lr: 0.05 -> 0.1; resume with the run's own values, pass --allow-change "
        "optim.lr to `ft-dist train` to change them (recorded in the run), or start afresh "
        "with a new train.run_name"
    )


def test_allow_change_resumes_and_is_recorded(
    tmp_path: Path, dataset: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "connect", lambda address: None)
    monkeypatch.setattr(preflight, "check_cluster", lambda cfg: None)
    fitted = []
    monkeypatch.setattr(worker, "fit", lambda cfg, group=None: fitted.append(cfg) or run)
    config = write_config(tmp_path, dataset)
    run = started_run(config, "optim.lr=0.05")
    argv = ["train", str(config), "optim.lr=0.1", "--allow-change", "optim.lr"]
    assert main(argv) == 0
    assert fitted[0].optim.lr == 0.1
    [change] = read_record(run)["changes"]
    assert (change["key"], change["old"], change["new"]) == ("optim.lr", 0.05, 0.1)
    assert "optim.lr: 0.05 -> 0.1 (allowed; recorded in" in capsys.readouterr().err
    # Recorded: the same command without the flag resumes too.
    assert main(["train", str(config), "optim.lr=0.1"]) == 0 and len(fitted) == 2
