"""Run plans: what the loop does each epoch, for a single run and for EDST."""

from __future__ import annotations

from pathlib import Path

from ft_dist.config import load_config
from ft_dist.train.methods import build_plan
from ft_dist.train.methods.edst import EDSTPlan
from ft_dist.train.methods.single import SinglePlan
from tests.train.conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_single_plan_writes_its_one_ticket_after_the_last_epoch(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tmp_path, train={"epochs": 3, "member": 1})
    plan = build_plan(cfg, steps_per_epoch=8)
    assert isinstance(plan, SinglePlan) and plan.ticket_choice == "best"
    actions = [plan.epoch(e) for e in range(3)]
    assert [a.write_ticket for a in actions] == [False, False, True]
    assert all(a.lr_scale is None and a.explore is None and a.ticket == 1 for a in actions)
    assert plan.decay_period(5) is None  # constant drop fraction: the schedule's own


def test_single_plan_cosine_without_stop_decays_over_the_run(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, tmp_path, sparsity={"drop_schedule": "cosine", "drop_fraction_min": 0.005}
    )
    assert build_plan(cfg, steps_per_epoch=8).decay_period(3) == (0, 2 * 8)


def test_edst_plan_explores_between_phases_and_writes_a_ticket_per_phase() -> None:
    cfg = load_config(CONFIGS / "cifar100_edst.yaml")
    plan = build_plan(cfg, steps_per_epoch=352)
    assert isinstance(plan, EDSTPlan) and plan.num_epochs == 450
    exploring, first_refine, phase_end, last = (plan.epoch(e) for e in (0, 150, 249, 449))
    assert exploring.lr_scale == 1.0 and not exploring.validate and not exploring.write_ticket
    assert exploring.ticket is None  # the exploration phase never becomes a ticket
    assert first_refine.lr_scale == 0.1 and first_refine.validate and first_refine.ticket == 1
    assert phase_end.write_ticket and phase_end.explore == (0.8, "gradient")
    assert last.write_ticket and last.ticket == 3 and last.explore is None


def test_imagenet_edst_plan_restarts_the_drop_fraction_cosine_each_phase() -> None:
    cfg = load_config(CONFIGS / "imagenet_edst.yaml")
    plan = build_plan(cfg, steps_per_epoch=10)
    assert plan.decay_period(1) == (0, 100 * 10)  # exploration + phase 1 share a period
    assert plan.decay_period(100 * 10 + 1) == (100 * 10, 70 * 10)  # after exploration 1


def test_channel_removal_ends_at_the_methods_measured_default(tmp_path: Path) -> None:
    from ft_dist.train.methods import (
        CHANNEL_END_OF_EXPLORATION,
        CHANNEL_END_OF_RUN,
        resolve_channel_schedule,
    )

    edst = {
        "method": "edst",
        "num_members": 2,
        "edst": {"exploration_epochs": 4, "refinement_epochs": 1},
    }
    channels = {"channel_sparsity": 0.5}
    cfg = resolve_channel_schedule(
        tiny_config(tmp_path, tmp_path, ensemble=edst, sparsity=channels), 10
    )
    assert cfg.sparsity.channel_end_step == round(CHANNEL_END_OF_EXPLORATION * 40)
    single = resolve_channel_schedule(tiny_config(tmp_path, tmp_path, sparsity=channels), 10)
    assert single.sparsity.channel_end_step == round(CHANNEL_END_OF_RUN * 2 * 10)  # 2 epochs
    given = tiny_config(tmp_path, tmp_path, sparsity={**channels, "channel_end_step": 7})
    assert resolve_channel_schedule(given, 10).sparsity.channel_end_step == 7
    unstructured = tiny_config(tmp_path, tmp_path)
    assert resolve_channel_schedule(unstructured, 10) is unstructured
