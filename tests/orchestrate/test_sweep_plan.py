"""A sweep's trials and the checks before any trial starts (no Ray cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_dist.config import save_config
from ft_dist.layout import run_dir, sweep_record_path
from ft_dist.orchestrate.sweep_plan import (
    SweepOptions,
    check_record,
    plan_sweep,
    write_record,
)
from tests.train.conftest import tiny_config


def _config(tmp_path: Path, **sections: dict) -> str:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", **sections)
    return str(save_config(cfg, tmp_path / "cfg.yaml"))


def test_each_trial_is_a_run_directory_named_by_its_values(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_sweep(
        SweepOptions(config, ("train.epochs=1", "sparsity.density=0.1,0.2", "optim.lr=0.05,0.1"))
    )
    assert plan.name == "tiny-sweep" and plan.dir == tmp_path / "runs" / "tiny-sweep"
    assert plan.keys == ["sparsity.density", "optim.lr"]
    assert plan.metric == "val/nll" and plan.mode == "min"
    assert len(plan.trials) == 4 and len({t.name for t in plan.trials}) == 4
    for trial in plan.trials:
        cfg = trial.cfg
        assert run_dir(cfg.train) == plan.dir / trial.name == trial.dir
        assert cfg.sparsity.density == trial.values["sparsity.density"]
        assert cfg.optim.lr == trial.values["optim.lr"]
        assert cfg.train.epochs == 1
        assert list(trial.runs.values()) == [cfg]
    # The same command plans the same trials (a re-run resumes them); --name moves them.
    again = plan_sweep(plan.options)
    assert [t.name for t in again.trials] == [t.name for t in plan.trials]
    other = plan_sweep(
        SweepOptions(config, ("optim.lr=0.05,0.1",), name="lr", metric="val/accuracy")
    )
    assert other.dir == tmp_path / "runs" / "lr" and other.mode == "max"


def test_a_dst_ensemble_trial_is_flattened_into_its_members(tmp_path: Path) -> None:
    config = _config(tmp_path, ensemble={"method": "dst_ensemble", "num_members": 2})
    plan = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",)))
    assert plan.separate_members
    trial = plan.trials[0]
    assert list(trial.runs) == [f"{trial.name}/member_1", f"{trial.name}/member_2"]
    member = trial.runs[f"{trial.name}/member_2"]
    assert run_dir(member.train) == trial.dir / "members" / "member_2"
    assert member.train.member == 2 and member.optim.lr == 0.05
    with pytest.raises(ValueError, match="--scheduler asha would stop the members"):
        plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",), scheduler="asha"))


@pytest.mark.parametrize(
    ("overrides", "options", "message"),
    [
        (
            ("sparsity.density=0.1,1.5",),
            {},
            r"cfg.yaml: sparsity.density: .*less than or equal to 1",
        ),
        (("sparsity.densty=0.1,0.2",), {}, "sparsity.densty: unknown key"),
        (("train.run_name=a,b",), {}, "train.run_name cannot be swept"),
        (("optim.lr=0.1,0.2",), {"scheduler": "fifo"}, "--scheduler 'fifo'"),
        (("optim.lr=0.1,0.2",), {"metric": "val/loss"}, "--metric 'val/loss': choose"),
        (("optim.lr=0.1,0.2", "data.val_split=null"), {}, "set data.val_split"),
        (
            ("optim.lr=0.1,0.2", "train.eval_every_epochs=2"),
            {"scheduler": "asha"},
            "set train.eval_every_epochs=1",
        ),
        (("optim.lr=0.1,0.2",), {"scheduler": "asha", "grace_epochs": 0}, "--grace-epochs"),
    ],
)
def test_bad_keys_and_values_fail_in_one_line_before_any_trial(
    tmp_path: Path, overrides: tuple[str, ...], options: dict, message: str
) -> None:
    config = _config(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        plan_sweep(SweepOptions(config, overrides, **options))
    assert "\n" not in str(error.value)


def test_every_value_a_space_can_draw_is_checked_first(tmp_path: Path) -> None:
    config = _config(tmp_path)
    space = tmp_path / "space.yaml"
    # 1.2 is out of range: refused whatever the draws would be.
    space.write_text("sparsity.density: {uniform: [0.1, 1.2]}\n")
    with pytest.raises(ValueError, match="sparsity.density: .*less than or equal to 1"):
        plan_sweep(SweepOptions(config, space=str(space), num_samples=2))
    space.write_text("sparsity.growth: {choice: [gradient, grow-by-magic]}\n")
    with pytest.raises(ValueError, match="sparsity.growth"):
        plan_sweep(SweepOptions(config, space=str(space), num_samples=2))
    space.write_text("sparsity.density: {uniform: [0.1, 0.3]}\n")
    plan = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",), space=str(space), num_samples=2))
    assert len(plan.trials) == 4 and plan.keys == ["optim.lr", "sparsity.density"]
    assert all(0.1 <= t.cfg.sparsity.density <= 0.3 for t in plan.trials)


def test_a_sweep_directory_resumes_only_the_same_sweep(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",), max_concurrent=2))
    assert check_record(plan) is False  # a new sweep
    write_record(plan)
    record = json.loads(sweep_record_path(plan.dir).read_text())
    assert set(record["trials"]) == {t.name for t in plan.trials}
    # The same sweep, at another concurrency: resumed.
    assert check_record(plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",)))) is True
    other = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.2",)))
    with pytest.raises(ValueError, match="holds another sweep \\(overrides changed") as error:
        check_record(other)
    assert "another --name" in str(error.value)
    asha = plan_sweep(SweepOptions(config, ("optim.lr=0.05,0.1",), scheduler="asha"))
    with pytest.raises(ValueError, match="scheduler changed"):
        check_record(asha)
