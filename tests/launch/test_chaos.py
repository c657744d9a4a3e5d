"""launch/chaos.py's fault schedules (the runs themselves are `make chaos`): seeded, every
case's faults at distinct checkpoint steps far enough apart, EDST's first one in the
exploration and none in the last epoch."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("chaos", REPO / "launch" / "chaos.py")
chaos = importlib.util.module_from_spec(spec)
sys.modules["chaos"] = chaos  # its dataclasses look their module up
spec.loader.exec_module(chaos)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("disk", [True, False])
def test_schedules_are_seeded_and_spaced(seed: int, disk: bool) -> None:
    rng, again = random.Random(seed), random.Random(seed)
    for case in chaos.CASES.values():
        faults = chaos.schedule(case, rng, disk)
        assert [(f.name, f.at_step) for f in faults] == [
            (f.name, f.at_step) for f in chaos.schedule(case, again, disk)
        ]
        steps = [f.at_step for f in faults]
        assert steps == sorted(steps) and all(s % chaos.CHECKPOINT_EVERY == 0 for s in steps)
        assert all(b - a >= chaos.CHECKPOINT_EVERY for a, b in zip(steps, steps[1:], strict=False))
        assert steps[0] > 0 and steps[-1] < case.total_steps - case.steps_per_epoch
        names = {f.name for f in faults}
        assert all(name in chaos.POINT for name in names)
        if case is chaos.EDST:
            assert faults[0].name == chaos.KILL_AFTER_CHECKPOINT
            assert faults[0].at_step < case.exploration_steps <= steps[1]
            assert (chaos.DISK in names) == disk and {chaos.RESIZE, chaos.KILL_IN_WRITE} <= names
        elif case is chaos.EDST_FSDP2:  # a fixed world size: no resize, no disk fault
            assert faults[0].name == chaos.KILL_AFTER_CHECKPOINT
            assert faults[0].at_step < case.exploration_steps <= steps[1]
            assert names == {chaos.KILL_AFTER_CHECKPOINT, chaos.KILL_IN_WRITE, chaos.DRIVER}
        else:
            assert names == {chaos.MEMBER_IN_WRITE, chaos.MEMBERS_DRIVER}
            # a complete checkpoint exists before any fault: each one resumes from it
            assert steps[0] >= 2 * chaos.CHECKPOINT_EVERY


def test_every_seed_gives_another_schedule_somewhere() -> None:
    schedules = {
        tuple((f.name, f.at_step) for f in chaos.schedule(chaos.EDST, random.Random(s), True))
        for s in range(10)
    }
    assert len(schedules) > 5


def test_the_resume_line_is_read_with_its_worker_count(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(
        "(RayTrainWorker pid=1) [chaos] resumed from /r/checkpoints/000000018: epoch 0, step 18"
        " of 189, 2304 images seen, on 1 worker(s)\n"
    )
    assert chaos.resumes(log) == [("/r/checkpoints/000000018", 18, 2304, 1)]


def test_a_faults_resume_is_its_own_runs_new_line(tmp_path: Path) -> None:
    """A member's resume is told from the other member's, and from its own older lines."""
    line = (
        "[{m}] resumed from /r/members/{m}/checkpoints/{step:09d}: epoch 0, step {step} of 108,"
        " {seen} images seen, on 1 worker(s)\n"
    )
    log = tmp_path / "x.log"
    log.write_text(line.format(m="member_2", step=9, seen=576))
    member_2 = Path("/r/members/member_2/checkpoints")
    seen = chaos.resumes(log, member_2)
    with log.open("a") as stream:  # the other member's line, then member 2's new one
        stream.write(line.format(m="member_1", step=9, seen=576))
        stream.flush()
        assert chaos.new_resumes(log, member_2, seen) == []
        stream.write(line.format(m="member_2", step=27, seen=1728))
    assert chaos.new_resumes(log, member_2, seen) == [(str(member_2 / "000000027"), 27, 1728, 1)]


def test_a_second_resume_from_the_same_checkpoint_is_new(tmp_path: Path) -> None:
    """A kill in checkpoint 27's write resumes from 18, as the kill after 18 did."""
    line = (
        "[r] resumed from /r/checkpoints/000000018: epoch 0, step 18 of 189, 2304 images seen,"
        " on 2 worker(s)\n"
    )
    log = tmp_path / "x.log"
    log.write_text(line)
    where = Path("/r/checkpoints")
    seen = chaos.resumes(log, where)
    assert chaos.new_resumes(log, where, seen) == []
    log.write_text(line * 2)
    assert chaos.new_resumes(log, where, seen) == [(str(where / "000000018"), 18, 2304, 2)]
