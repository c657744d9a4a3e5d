"""A diverged run stops with one line and never writes a non-finite ticket or checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ft_dist.layout import checkpoints_dir, run_dir, run_tickets
from ft_dist.train import loop
from ft_dist.train.checkpoint import SHARED_FILE
from ft_dist.train.finite import NonFiniteError, weights_finite
from tests.train.conftest import tiny_config
from tests.train.test_loop import run_loop


def _checkpoints(cfg) -> list[Path]:
    root = checkpoints_dir(run_dir(cfg.train))
    return sorted(root.iterdir()) if root.is_dir() else []


def _all_finite(value) -> bool:
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    if torch.is_tensor(value) and value.is_floating_point():
        return bool(torch.isfinite(value).all())
    return True


def test_weights_finite() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert weights_finite(module)
    module[1].running_var[0] = math.inf  # a buffer counts too
    assert not weights_finite(module)


def test_infinite_lr_stops_at_the_first_log_point_and_writes_nothing(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_mnist, tmp_path, optim={"lr": math.inf})
    with pytest.raises(NonFiniteError) as raised:
        run_loop(cfg)
    message = str(raised.value)
    assert "\n" not in message
    assert "training loss is nan at step 4 (epoch 1) with lr inf" in message, message
    assert "Lower optim.lr" in message and "no checkpoint was written yet" in message
    assert run_tickets(run_dir(cfg.train)) == [] and _checkpoints(cfg) == []


def test_nan_weights_are_never_checkpointed_between_log_points(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    # No log point before step 8, a checkpoint every 2 steps: the weights check stops it.
    cfg = tiny_config(
        tiny_mnist,
        tmp_path,
        optim={"lr": math.inf},
        train={"log_every_steps": 100, "checkpoint_every_steps": 2},
    )
    with pytest.raises(
        NonFiniteError, match="weights hold NaN/inf before the checkpoint at step 2"
    ):
        run_loop(cfg)
    assert _checkpoints(cfg) == [] and run_tickets(run_dir(cfg.train)) == []


def test_divergence_names_the_last_good_checkpoint_and_rerun_rolls_back(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fine until step 6, then an infinite LR: checkpoint 5 is good, step 8's log point stops.
    good_lr = loop.learning_rate

    def blowing_up(cfg, step, *args, **kwargs):
        return math.inf if step >= 6 else good_lr(cfg, step, *args, **kwargs)

    cfg = tiny_config(
        tiny_mnist, tmp_path, train={"checkpoint_every_steps": 5, "keep_checkpoints": 5}
    )
    monkeypatch.setattr(loop, "learning_rate", blowing_up)
    with pytest.raises(NonFiniteError) as raised:
        run_loop(cfg)
    [good] = _checkpoints(cfg)
    assert good.name.endswith("5")
    assert f"resumes from the last good checkpoint {good}" in str(raised.value)
    assert "at step 8 (epoch 1) with lr inf" in str(raised.value)

    # The option offered: the same run name again, with a sane LR, resumes from it.
    monkeypatch.setattr(loop, "learning_rate", good_lr)
    summary, tracker, _ = run_loop(cfg)
    assert summary["steps"] == 16
    assert any("epoch 0, step 5 of 16" in note for note in tracker.notes)
    [ticket] = run_tickets(run_dir(cfg.train))
    assert _all_finite(torch.load(ticket, weights_only=True))
    for checkpoint in _checkpoints(cfg):
        assert _all_finite(torch.load(checkpoint / SHARED_FILE, weights_only=True))
