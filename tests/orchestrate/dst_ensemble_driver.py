"""Run `fit_dst_ensemble` with a test loop as a client process of a (token-auth) Ray cluster.

Ray reads its auth settings when a process first loads them, so each test drives the
cluster from a fresh process started with the cluster's environment:

    python -m tests.orchestrate.dst_ensemble_driver CONFIG.yaml LOOP

LOOP is `meet_fail2`: members wait for each other before training (proves they run at the
same time) and record their node, then member 2 crashes. LOOP is `timeline`: each member
records the wall time its loop started and ended (the loop runs while the member's workers
hold their CPUs), and the first two members wait for each other, so that they overlap. The
LOOP is `lose_node`: see `loop_lose_member_2s_node` (the test kills member 2's node). The
last line printed is a JSON list of the members' outcomes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import ray

from ft_dist.config import load_config
from ft_dist.orchestrate.dst_ensemble import fit_dst_ensemble
from ft_dist.train.loop import train

# Ray workers get the loops below by value: they need not import the tests package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
BARRIER_TIMEOUT_S = 240.0


def loop_meet_then_fail_member_2(cfg, session, tracker):
    """The real loop, entered only once every member's loop is running (which proves that
    the members run at the same time); records each member's node; member 2 then crashes."""
    barrier = Path(cfg.train.output_dir).parent / "barrier"
    barrier.mkdir(exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    (barrier / f"member_{cfg.train.member}.json").write_text(json.dumps({"node": node}))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(barrier.glob("member_*.json"))) < cfg.ensemble.num_members:
        if time.monotonic() > deadline:
            raise TimeoutError("the other members never started: they did not run concurrently")
        time.sleep(0.5)
    if cfg.train.member == 2:
        raise RuntimeError("member 2 crashed on purpose")
    return train(cfg, session, tracker)


def loop_timeline(cfg, session, tracker):
    """The real loop, bracketed by wall-time records in EXP_DIR/timeline/member_<i>.json.
    Before training, a member waits until two members have started (itself included): the
    first two then surely overlap, and a queued member, started after one of them ended,
    passes at once. All members run on one machine, so their wall clocks agree."""
    timeline = Path(cfg.train.output_dir).parent / "timeline"
    timeline.mkdir(exist_ok=True)
    record = timeline / f"member_{cfg.train.member}.json"
    (timeline / f"started_{cfg.train.member}").touch()
    start = time.time()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(timeline.glob("started_*"))) < min(2, cfg.ensemble.num_members):
        if time.monotonic() > deadline:
            raise TimeoutError("no second member started: members did not run concurrently")
        time.sleep(0.2)
    result = train(cfg, session, tracker)
    record.write_text(json.dumps({"start": start, "end": time.time()}))
    return result


class PausingSession:
    """The real session, except that after its first checkpoint it writes `flag` (its pid
    and the checkpoint's step, atomically) and calls `pause()`, for a test to act on it
    (kill the node, resize the group). `flag` None: never pauses."""

    def __init__(self, session, flag: Path | None) -> None:
        self.session, self.flag = session, flag
        self.rank, self.world_size = session.rank, session.world_size
        self.local_rank, self.device = session.local_rank, session.device

    def latest_checkpoint_dir(self):
        return self.session.latest_checkpoint_dir()

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.session.report(metrics, checkpoint_dir)
        if not checkpoint_dir or self.flag is None or self.flag.exists():
            return
        partial = self.flag.with_suffix(".partial")
        partial.write_text(json.dumps({"pid": os.getpid(), "step": Path(checkpoint_dir).name}))
        partial.rename(self.flag)
        self.pause()

    def pause(self) -> None:
        time.sleep(300)  # the test ends this worker long before
        raise RuntimeError("the test never ended this worker")


class PauseAtFirstCheckpoint(PausingSession):
    """Each member stops after its first checkpoint: member 2 sleeps there until the test
    kills its node; member 1 waits for the flag `node_lost`, then trains on (and so, when it
    ends, frees the CPU member 2 resumes on)."""

    def __init__(self, session, flags: Path, member: int) -> None:
        super().__init__(session, flags / f"paused_{member}")
        self.node_lost, self.member = flags / "node_lost", member

    def pause(self) -> None:
        if self.member == 2:
            super().pause()
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while not self.node_lost.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never killed member 2's node")
            time.sleep(0.2)


def loop_lose_member_2s_node(cfg, session, tracker):
    """The real loop, paused once per member (PauseAtFirstCheckpoint); every start records
    `member:checkpoint it resumed from` (0 = none) in EXP_DIR/flags/starts.txt."""
    flags = Path(cfg.train.output_dir).parent / "flags"
    flags.mkdir(exist_ok=True)
    resume = session.latest_checkpoint_dir()
    with open(flags / "starts.txt", "a") as starts:
        starts.write(f"{cfg.train.member}:{Path(resume).name if resume else 0}\n")
    return train(cfg, PauseAtFirstCheckpoint(session, flags, cfg.train.member), tracker)


LOOPS = {
    "meet_fail2": loop_meet_then_fail_member_2,
    "timeline": loop_timeline,
    "lose_node": loop_lose_member_2s_node,
}


def main(config_path: str, loop_name: str) -> int:
    cfg = load_config(config_path)
    ray.init(address=os.environ["RAY_GCS_ADDRESS"])
    try:
        _, outcomes = fit_dst_ensemble(cfg, LOOPS[loop_name])
    finally:
        ray.shutdown()
    print(json.dumps([{"member": o.member, "error": o.error} for o in outcomes]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
