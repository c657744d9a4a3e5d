"""Learning-rate schedules as pure functions of the step, and the optimizer builder."""

from __future__ import annotations

import math

import pytest
import torch

from ft_dist.train.config import OptimConfig
from ft_dist.train.optim import build_optimizer, learning_rate

STEPS, EPOCHS = 10, 8  # 10 steps per epoch, 8 epochs


def lrs(cfg: OptimConfig, scale: float | None = None) -> list[float]:
    return [learning_rate(cfg, s, STEPS, EPOCHS, scale) for s in range(STEPS * EPOCHS)]


def test_step_schedule_decays_at_milestone_epochs() -> None:
    values = lrs(OptimConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1))
    assert values[0] == values[39] == pytest.approx(0.1)  # epochs 0-3
    assert values[40] == values[59] == pytest.approx(0.01)  # epochs 4-5 (from 50%)
    assert values[60] == values[-1] == pytest.approx(0.001)  # epochs 6-7 (from 75%)


def test_warmup_is_linear_then_cosine_reaches_zero() -> None:
    values = lrs(OptimConfig(lr=0.2, schedule="cosine", warmup_epochs=1))
    assert values[0] == pytest.approx(0.2 / STEPS) and values[4] == pytest.approx(0.2 * 5 / STEPS)
    assert values[STEPS] == pytest.approx(0.2)  # warm-up over, cosine starts at its top
    assert all(a >= b for a, b in zip(values[STEPS:], values[STEPS + 1 :], strict=False))
    assert values[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 69 / 70)))


def test_edst_phase_scale_replaces_the_schedule_but_keeps_warmup() -> None:
    cfg = OptimConfig(lr=0.1, schedule="step", warmup_epochs=0.5)
    assert learning_rate(cfg, 79, STEPS, EPOCHS, 0.01) == pytest.approx(0.001)
    assert learning_rate(cfg, 0, STEPS, EPOCHS, 1.0) == pytest.approx(0.1 / 5)


@pytest.mark.parametrize(
    ("cfg", "kind", "extra"),
    [
        (OptimConfig(name="sgd", momentum=0.9), torch.optim.SGD, {"nesterov": False}),
        (OptimConfig(name="sgd-nesterov", momentum=0.9), torch.optim.SGD, {"nesterov": True}),
        (
            OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.99)),
            torch.optim.AdamW,
            {"betas": (0.8, 0.99)},
        ),
    ],
)
def test_build_optimizer(cfg: OptimConfig, kind: type, extra: dict) -> None:
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2).parameters())
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == cfg.weight_decay
    assert {k: group[k] for k in extra} == extra


def test_nesterov_without_momentum_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="sgd-nesterov needs optim.momentum > 0"):
        OptimConfig(name="sgd-nesterov", momentum=0.0)
