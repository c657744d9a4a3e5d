"""Ctrl-C during `ft-dist train` ends with one ft-dist line: where the run stopped and the
command that resumes it (after Ray's own "Received SIGINT" lines; no Ray started here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_dist import preflight
from ft_dist.cli import main
from ft_dist.train import worker
from tests.cli.test_train_errors import write_config


def _interrupted_fit(exc: BaseException, checkpoint_step: int | None):
    def fit(cfg, group=None):
        if checkpoint_step is not None:
            path = Path(cfg.train.output_dir) / cfg.train.run_name / "checkpoints"
            path = path / f"{checkpoint_step:09d}"
            path.mkdir(parents=True)
            meta = {"step": checkpoint_step, "epochs_done": 2.5, "num_epochs": 4}
            (path / "meta.json").write_text(json.dumps({**meta, "total_steps": 64}))
        raise exc

    return fit


def ray_sigint_exit() -> SystemExit:
    """What Ray's blocked ray.get raises after Ray Train's Ctrl-C handler called sys.exit(0)
    (measured with Ray 2.60: a real SIGINT during `ft-dist train`)."""
    stop = SystemExit(1)
    stop.ray_terminate_msg = "SystemExit is raised (sys.exit is called). Exit code: 0."
    return stop


@pytest.mark.parametrize("stop", [ray_sigint_exit(), SystemExit(0), KeyboardInterrupt()])
def test_ctrl_c_ends_with_where_it_stopped_and_how_to_resume(
    tmp_path: Path,
    dataset: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
    stop,
) -> None:
    monkeypatch.setattr(worker, "connect", lambda address: None)
    monkeypatch.setattr(preflight, "check_cluster", lambda cfg: None)
    monkeypatch.setattr(worker, "fit", _interrupted_fit(stop, 40))
    config = write_config(tmp_path, dataset)
    assert (
        main(
            [
                "train",
                str(config),
                "optim.lr=0.05",
                "train.run_name=r1",
                "tracking.project=my project",
            ]
        )
        == 130
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    checkpoint = tmp_path / "runs" / "r1" / "checkpoints" / "000000040"
    assert last == (
        f"ft-dist train: stopped by Ctrl-C at step 40 of 64 (2.50 of 4 epochs done) "
        f"(checkpoint kept at {checkpoint}); resume with: ft-dist train {config} optim.lr=0.05 "
        "train.run_name=r1 'tracking.project=my project'"
    )


def test_ctrl_c_before_the_first_checkpoint(
    tmp_path: Path,
    dataset: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "connect", lambda address: None)
    monkeypatch.setattr(preflight, "check_cluster", lambda cfg: None)
    monkeypatch.setattr(worker, "fit", _interrupted_fit(KeyboardInterrupt(), None))
    config = write_config(tmp_path, dataset)
    assert main(["train", str(config), "--group", "g"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ft-dist train: stopped by Ctrl-C before the first checkpoint of ")
    assert last.endswith(f"start again with: ft-dist train {config} --group g")


def test_a_real_exit_code_is_not_taken_for_ctrl_c(
    tmp_path: Path,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "connect", lambda address: None)
    monkeypatch.setattr(preflight, "check_cluster", lambda cfg: None)
    monkeypatch.setattr(worker, "fit", _interrupted_fit(SystemExit(3), None))
    with pytest.raises(SystemExit) as raised:
        main(["train", str(write_config(tmp_path, dataset))])
    assert raised.value.code == 3
