"""Learning-rate schedules as pure functions of the step, and the optimizer builder."""

from __future__ import annotations

import math

import pytest
import torch

from ft_dist.train.config import OptimConfig
from ft_dist.train.optim import (
    base_learning_rate,
    build_optimizer,
    learning_rate,
    milestone_epochs,
    no_decay_parameter_names,
)

STEPS, EPOCHS = 10, 8  # 10 steps per epoch, 8 epochs


def lrs(cfg: OptimConfig, scale: float | None = None) -> list[float]:
    return [learning_rate(cfg, s, STEPS, EPOCHS, scale) for s in range(STEPS * EPOCHS)]


def test_step_schedule_decays_at_milestone_epochs() -> None:
    values = lrs(OptimConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1))
    assert values[0] == values[39] == pytest.approx(0.1)  # epochs 0-3
    assert values[40] == values[59] == pytest.approx(0.01)  # epochs 4-5 (from 50%)
    assert values[60] == values[-1] == pytest.approx(0.001)  # epochs 6-7 (from 75%)


def test_fraction_milestones_round_down_as_multisteplr_int() -> None:
    # main_DST.py: MultiStepLR(milestones=[int(250 / 2), int(250 * 3 / 4)]) = [125, 187].
    cfg = OptimConfig(schedule="step", milestones=(0.5, 0.75))
    assert milestone_epochs(cfg, 250) == (125, 187)
    assert milestone_epochs(OptimConfig(milestones=(0.3, 0.6, 0.9)), 100) == (30, 60, 90)
    values = [learning_rate(cfg, e, 1, 250) for e in (124, 125, 186, 187)]
    assert values == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_milestone_epochs_replace_fractions_and_must_fit_the_run() -> None:
    cfg = OptimConfig(schedule="step", milestone_epochs=(3, 5))
    assert [learning_rate(cfg, s, STEPS, EPOCHS) for s in (29, 30, 49, 50)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.001]
    )
    with pytest.raises(ValueError, match=r"optim.milestone_epochs=\[3, 5\] must be below"):
        learning_rate(cfg, 0, STEPS, 5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"milestone_epochs": (5, 3)}, "strictly increasing"),
        ({"milestone_epochs": (0, 3)}, "strictly increasing"),
        ({"milestone_epochs": (3, 3)}, "strictly increasing"),
        ({"milestone_epochs": (3,), "milestones": (0.5,)}, "only one of optim.milestones"),
        ({"warmup_style": "per_epoch", "warmup_epochs": 2.5}, "whole optim.warmup_epochs"),
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"no_decay": "bn"}, "no_decay"),
    ],
)
def test_bad_optim_config_names_the_key(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimConfig(**fields)


def test_lr_scales_linearly_from_the_base_batch() -> None:
    cfg = OptimConfig(lr=0.1, base_batch_size=128, schedule="constant")
    assert base_learning_rate(cfg, 1024) == pytest.approx(0.8)
    assert learning_rate(cfg, 0, STEPS, EPOCHS, global_batch_size=64) == pytest.approx(0.05)
    assert learning_rate(cfg, 0, STEPS, EPOCHS, 0.01, global_batch_size=256) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="base_batch_size=128 scales the LR"):
        learning_rate(cfg, 0, STEPS, EPOCHS)
    # Without a base batch the configured LR is used at any global batch.
    assert (
        learning_rate(OptimConfig(lr=0.3, schedule="constant"), 0, 1, 1, global_batch_size=4096)
        == 0.3
    )


def test_per_epoch_warmup_is_the_official_imagenet_staircase() -> None:
    # ImageNet/main.py:363-364: epoch e < W trains at lr * (e + 1) / (W + 1).
    cfg = OptimConfig(lr=0.6, warmup_epochs=2, warmup_style="per_epoch", schedule="constant")
    values = [learning_rate(cfg, s, STEPS, EPOCHS) for s in range(3 * STEPS)]
    assert values == pytest.approx([0.2] * STEPS + [0.4] * STEPS + [0.6] * STEPS)


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


class NormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(2)
        self.downsample = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.GroupNorm(1, 2))
        self.fc = torch.nn.Linear(2, 3)


def test_no_decay_groups_norms_and_optionally_biases() -> None:
    net = NormNet()
    norms = {"bn1.weight", "bn1.bias", "downsample.1.weight", "downsample.1.bias"}
    assert no_decay_parameter_names(net, "none") == set()
    assert no_decay_parameter_names(net, "norm") == norms
    biases = {"downsample.0.bias", "fc.bias"}
    assert no_decay_parameter_names(net, "norm_and_bias") == norms | biases
    optimizer = build_optimizer(OptimConfig(weight_decay=1e-4, no_decay="norm"), net)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and exempt["weight_decay"] == 0.0
    named = dict(net.named_parameters())
    assert {id(p) for p in exempt["params"]} == {id(named[n]) for n in norms}
    assert len(decayed["params"]) + len(exempt["params"]) == len(named)


def test_weight_decay_leaves_exempt_parameters_alone() -> None:
    net = NormNet()
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(1.0)
    optimizer = build_optimizer(OptimConfig(lr=0.5, weight_decay=0.1, no_decay="norm"), net)
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # only weight decay moves anything: 1 - 0.5 * 0.1
    after = {name: param.detach().unique().tolist() for name, param in net.named_parameters()}
    exempt = {"bn1.weight", "bn1.bias", "downsample.1.weight", "downsample.1.bias"}
    assert all(after[name] == [1.0] for name in exempt)
    assert all(after[name] == [pytest.approx(0.95)] for name in after.keys() - exempt)


def test_parameter_form_still_works_but_cannot_find_norms() -> None:
    net = NormNet()
    optimizer = build_optimizer(OptimConfig(), net.parameters())
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError, match="pass the nn.Module to build_optimizer"):
        build_optimizer(OptimConfig(no_decay="norm"), net.parameters())
