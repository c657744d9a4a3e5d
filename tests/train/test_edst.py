"""The EDST phase plan at its boundaries (SPEC §5)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ft_dist.train.edst import (
    DecayPeriod,
    drop_decay_period,
    epoch_plan,
    refinement_lr_parts,
    total_epochs,
)
from ft_dist.train.ensemble_config import EDSTConfig, EnsembleConfig

CFG = EDSTConfig(exploration_epochs=150, refinement_epochs=100)
M = 3


def test_total_epochs_is_published_budget() -> None:
    assert total_epochs(M, CFG) == 450
    assert total_epochs(1, EDSTConfig(exploration_epochs=0, refinement_epochs=7)) == 7


def test_exploration_boundary() -> None:
    first = epoch_plan(0, M, CFG)
    last = epoch_plan(149, M, CFG)
    assert (first.phase, first.lr_scale, first.phase_end, first.explore_after) == (
        0,
        1.0,
        False,
        False,
    )
    assert (last.phase, last.lr_scale, last.phase_end, last.explore_after) == (0, 1.0, False, False)
    start = epoch_plan(150, M, CFG)
    assert (start.phase, start.lr_scale, start.phase_end) == (1, 0.1, False)


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_refinement_halves_and_end(phase: int) -> None:
    start = 150 + (phase - 1) * 100
    assert epoch_plan(start, M, CFG).lr_scale == 0.1
    assert epoch_plan(start + 49, M, CFG).lr_scale == 0.1
    assert epoch_plan(start + 50, M, CFG).lr_scale == 0.01
    end = epoch_plan(start + 99, M, CFG)
    assert end.phase == phase and end.lr_scale == 0.01 and end.phase_end
    assert end.explore_after == (phase < M)
    assert not epoch_plan(start + 98, M, CFG).phase_end
    assert [epoch_plan(e, M, CFG).phase for e in range(start, start + 100)] == [phase] * 100


def test_lr_back_to_first_half_after_exploration() -> None:
    assert epoch_plan(249, M, CFG).explore_after
    nxt = epoch_plan(250, M, CFG)
    assert nxt.phase == 2 and nxt.lr_scale == 0.1


def test_last_epoch_and_out_of_range() -> None:
    last = epoch_plan(449, M, CFG)
    assert last.phase == 3 and last.phase_end and not last.explore_after
    with pytest.raises(ValueError, match="epochs 0..449"):
        epoch_plan(450, M, CFG)
    with pytest.raises(ValueError, match="outside"):
        epoch_plan(-1, M, CFG)


def test_odd_refinement_and_no_exploration() -> None:
    cfg = EDSTConfig(exploration_epochs=0, refinement_epochs=3)
    plans = [epoch_plan(e, 2, cfg) for e in range(total_epochs(2, cfg))]
    assert [p.phase for p in plans] == [1, 1, 1, 2, 2, 2]
    assert [p.lr_scale for p in plans] == [0.1, 0.1, 0.01] * 2
    assert [p.explore_after for p in plans] == [False, False, True, False, False, False]
    assert [p.phase_end for p in plans] == [False, False, True, False, False, True]


def test_plan_covers_every_epoch_once() -> None:
    cfg = EDSTConfig(exploration_epochs=2, refinement_epochs=4)
    ends = [e for e in range(total_epochs(3, cfg)) if epoch_plan(e, 3, cfg).phase_end]
    assert ends == [5, 9, 13]
    phases = [epoch_plan(e, 3, cfg).phase for e in range(total_epochs(3, cfg))]
    assert phases == [0] * 2 + [1] * 4 + [2] * 4 + [3] * 4


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="refinement_epochs"):
        EDSTConfig(exploration_epochs=1, refinement_epochs=0)
    with pytest.raises(ValidationError, match="explore_drop_fraction"):
        EDSTConfig(exploration_epochs=1, refinement_epochs=1, explore_drop_fraction=0.0)
    with pytest.raises(ValidationError, match="ensemble.edst section"):
        EnsembleConfig(method="edst", num_members=3)
    with pytest.raises(ValidationError, match="num_members"):
        EnsembleConfig(method="single", num_members=2)
    ok = EnsembleConfig(method="edst", num_members=3, edst=CFG)
    assert ok.edst is not None and ok.edst.ticket == "best"
    assert ok.edst.explore_growth == "gradient"  # the official runs' growth mode


IMAGENET = EDSTConfig(
    exploration_epochs=30,
    refinement_epochs=70,
    refinement_lr_scales=(0.1, 0.01, 0.001),
    refinement_lr_epochs=(30, 30, 10),
)


def test_refinement_lr_parts_default_to_halves_and_take_explicit_epochs() -> None:
    assert refinement_lr_parts(CFG) == ((0.1, 50), (0.01, 50))
    three = EDSTConfig(exploration_epochs=0, refinement_epochs=7, refinement_lr_scales=(1, 2, 3))
    assert refinement_lr_parts(three) == ((1, 3), (2, 2), (3, 2))
    assert refinement_lr_parts(IMAGENET) == ((0.1, 30), (0.01, 30), (0.001, 10))


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_thirty_thirty_ten_refinement(phase: int) -> None:
    start = 30 + (phase - 1) * 70
    scales = [epoch_plan(e, 4, IMAGENET).lr_scale for e in range(start, start + 70)]
    assert scales == [0.1] * 30 + [0.01] * 30 + [0.001] * 10
    assert epoch_plan(start + 69, 4, IMAGENET).explore_after == (phase < 4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"refinement_lr_scales": (0.1, 0.01), "refinement_lr_epochs": (30, 30)},
            "sums to 60, not refinement_epochs=70",
        ),
        ({"refinement_lr_epochs": (60, 10)}, "one positive epoch count per"),
        ({"refinement_lr_epochs": (70, 0, 0)}, "one positive epoch count per"),
        ({"refinement_lr_scales": (0.1, 0.0, 0.001)}, "refinement_lr_scales"),
        ({"refinement_lr_scales": ()}, "refinement_lr_scales"),
        ({"explore_growth": "magnitude"}, "explore_growth"),
    ],
)
def test_refinement_lr_validation_names_the_key(fields: dict, message: str) -> None:
    values = {**IMAGENET.model_dump(), **fields}
    with pytest.raises(ValidationError, match=message):
        EDSTConfig(**values)


def test_drop_decay_periods_restart_after_each_exploration() -> None:
    steps = 10
    first, later = DecayPeriod(0, 100 * steps), 70 * steps
    # Exploration and phase 1 share the first period (ImageNet/main.py:230: 100 epochs).
    assert drop_decay_period(0, steps, 4, IMAGENET) == first
    assert drop_decay_period(1, steps, 4, IMAGENET) == first
    assert drop_decay_period(30 * steps + 1, steps, 4, IMAGENET) == first
    assert drop_decay_period(100 * steps, steps, 4, IMAGENET) == first  # its last step
    # After each exploration a new 70-epoch period (main.py:374) starts with the next step.
    for start in (100, 170, 240):
        expected = DecayPeriod(start * steps, later)
        assert drop_decay_period(start * steps + 1, steps, 4, IMAGENET) == expected
        assert drop_decay_period((start + 70) * steps, steps, 4, IMAGENET) == expected
    # One member: no exploration, one period over the whole run.
    assert drop_decay_period(55, steps, 1, IMAGENET) == DecayPeriod(0, 100 * steps)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        drop_decay_period(5, 0, 4, IMAGENET)
