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


def test_the_resume_line_is_read_with_its_worker_count_and_pid(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(
        "\x1b[36m(RayTrainWorker pid=17)\x1b[0m [chaos] resumed from /r/checkpoints/000000018: "
        "epoch 0, step 18 of 189, 2304 images seen, on 1 worker(s)\n"
        "[chaos] resumed from /r/checkpoints/000000027: epoch 1, step 27 of 189, 3456 images "
        "seen, on 2 worker(s)\n"
    )
    assert chaos.resumes(log) == [
        ("/r/checkpoints/000000018", 18, 2304, 1, 17),
        ("/r/checkpoints/000000027", 27, 3456, 2, 0),  # no Ray prefix
    ]


LINE = (
    "(RayTrainWorker pid={pid}) [{m}] resumed from /r/{m}/checkpoints/{step:09d}: epoch 0, step "
    "{step} of 189, {seen} images seen, on {workers} worker(s)\n"
)


def test_a_faults_resume_is_its_own_runs_new_line(tmp_path: Path) -> None:
    """A member's resume is told from the other member's, and from its own old lines that a
    restarted node's log monitor delivers again."""
    log = tmp_path / "x.log"
    log.write_text(LINE.format(pid=5, m="member_2", step=9, seen=576, workers=1))
    member_2 = Path("/r/member_2/checkpoints")
    seen = chaos.resumes(log, member_2)
    with log.open("a") as stream:
        stream.write(LINE.format(pid=6, m="member_1", step=9, seen=576, workers=1))
        stream.write(LINE.format(pid=5, m="member_2", step=9, seen=576, workers=1))  # again
        stream.flush()
        assert chaos.new_resumes(log, member_2, seen) == []
        stream.write(LINE.format(pid=7, m="member_2", step=27, seen=1728, workers=1))
    assert chaos.new_resumes(log, member_2, seen) == [(str(member_2 / "000000027"), 27, 1728, 1, 7)]


def test_a_second_resume_from_the_same_checkpoint_is_new(tmp_path: Path) -> None:
    """A kill in checkpoint 27's write resumes from 18, as the kill after 18 did: the same
    text, printed by another worker."""
    log = tmp_path / "x.log"
    log.write_text(LINE.format(pid=5, m="run", step=18, seen=2304, workers=2))
    where = Path("/r/run/checkpoints")
    seen = chaos.resumes(log, where)
    assert chaos.new_resumes(log, where, seen) == []
    with log.open("a") as stream:
        stream.write(LINE.format(pid=9, m="run", step=18, seen=2304, workers=2))
    assert chaos.new_resumes(log, where, seen) == [(str(where / "000000018"), 18, 2304, 2, 9)]
