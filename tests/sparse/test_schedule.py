import math

import pytest
from pydantic import ValidationError

from ft_dist.sparse import SparsityConfig, UpdateSchedule


def test_updates_every_delta_t_until_stop():
    schedule = UpdateSchedule.from_config(SparsityConfig(update_every_steps=10, stop_step=30))
    assert [s for s in range(1, 60) if schedule.is_update_step(s)] == [10, 20, 30]
    assert schedule.num_updates(55) == 3


def test_cosine_drop_fraction_decays_to_zero_at_stop():
    config = SparsityConfig(drop_fraction=0.3, drop_schedule="cosine", stop_step=100)
    schedule = UpdateSchedule.from_config(config)
    assert schedule.drop_fraction_at(0) == pytest.approx(0.3)
    assert schedule.drop_fraction_at(50) == pytest.approx(0.15)
    assert schedule.drop_fraction_at(100) == pytest.approx(0.0, abs=1e-12)
    assert schedule.drop_fraction_at(25) == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_cosine_with_a_floor_restarts_in_each_period_the_caller_names():
    config = SparsityConfig(drop_fraction=0.5, drop_schedule="cosine", drop_fraction_min=0.005)
    schedule = UpdateSchedule.from_config(config)
    # One period of 100 steps starting at step 300: f0 at its start, the floor at its end.
    assert schedule.drop_fraction_at(300, 300, 100) == pytest.approx(0.5)
    assert schedule.drop_fraction_at(350, 300, 100) == pytest.approx(0.2525)
    assert schedule.drop_fraction_at(400, 300, 100) == pytest.approx(0.005)
    assert schedule.drop_fraction_at(401, 400, 100) == pytest.approx(
        0.005 + 0.495 * 0.5 * (1 + math.cos(math.pi / 100))
    )
    # Steps past the end of a period hold the floor (RigL-style stop_step also ends it).
    assert schedule.drop_fraction_at(450, 300, 100) == pytest.approx(0.005)


def test_cosine_without_stop_step_needs_the_period():
    schedule = UpdateSchedule.from_config(SparsityConfig(drop_schedule="cosine"))
    with pytest.raises(ValueError, match="period_start/period_length"):
        schedule.drop_fraction_at(1000)
    assert schedule.drop_fraction_at(1000, 0, 2000) == pytest.approx(0.25)


def test_library_default_update_interval_is_the_papers():
    assert UpdateSchedule.from_config(SparsityConfig()).every_steps == 1000
    assert SparsityConfig().inactive_momentum == "zero"


def test_update_every_samples_rescales_with_the_global_batch():
    config = SparsityConfig(update_every_samples=128_000)
    assert UpdateSchedule.from_config(config, global_batch_size=128).every_steps == 1000
    assert UpdateSchedule.from_config(config, global_batch_size=256).every_steps == 500
    with pytest.raises(ValueError, match="global batch size"):
        UpdateSchedule.from_config(config)


def test_static_masks_never_update():
    schedule = UpdateSchedule.from_config(SparsityConfig(update="none"))
    assert not any(schedule.is_update_step(s) for s in range(1, 1000))


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.2}, "density"),
        ({"update_every_steps": -5}, "update_every_steps"),
        ({"drop_fraction": 1.5}, "drop_fraction"),
        ({"growth": "magic"}, "growth"),
        ({"drop_fraction_min": 0.1}, "drop_schedule=cosine"),
        ({"drop_schedule": "cosine", "drop_fraction": 0.3, "drop_fraction_min": 0.4}, "exceed"),
        ({"inactive_momentum": "reset"}, "inactive_momentum"),
        ({"densty": 0.2}, "densty"),
        ({"update_every_steps": 10, "update_every_samples": 100}, "only one"),
    ],
)
def test_bad_sparsity_config_names_the_field(fields, key):
    with pytest.raises(ValidationError, match=key):
        SparsityConfig(**fields)
