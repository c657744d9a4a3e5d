"""`make chaos`: an EDST run (DDP, elastic), an EDST run sharded with FSDP2 and a DST
Ensemble on the local multi-node cluster, each through seeded schedules of faults and
checked bit-identical against an uninterrupted run of the same config.

    python launch/chaos.py [--seeds 0 1 ...] [--cases edst edst-fsdp2 dst-ensemble]
                           [--dir D] [--keep]

1. A local cluster (launch/local_cluster.py, token auth): a head with no CPUs for
   training (the job drivers, Tune's trials, Ray Train's controllers) and 2 worker nodes
   of 1 CPU, so each training worker has a node of its own; the bundled digits as shards.
2. Per case, the reference: its config submitted once (`launch/submit.sh`), uninterrupted.
3. Per seed and case, the same config under another run name through the case's faults.
   Each fires at a seeded step through a fault point (ft_dist/failpoints.py): rank 0
   stops in a checkpoint write (files written, not published) or just after a checkpoint,
   and the fault is done to it there, so a fault lands at a known step whatever the speed
   of the machine. Each is armed once the previous one has recovered.
   * EDST (elastic, 1-2 workers, a fixed global batch of 128): SIGKILL rank 0 during the
     exploration; SIGKILL rank 0 in a checkpoint write; kill rank 0's node (the run goes
     on with 1 worker and grows back to 2 once the node returns: an elastic resize both
     ways); SIGKILL the job driver and damage the newest checkpoint, re-submit; fill the
     run's disk (a tmpfs of its own) until a checkpoint write fails, free it, re-submit.
   * EDST sharded (train.strategy=fsdp2, 2 workers): SIGKILL rank 0 during the
     exploration; SIGKILL rank 0 in a checkpoint write (its DCP shards written, not
     published); SIGKILL the job driver and damage a rank's DCP shard file, re-submit.
   * DST Ensemble (2 members of 1 worker each, concurrent Tune trials): SIGKILL a
     member's rank 0 in a checkpoint write; SIGKILL the job driver during the members,
     re-submit.
4. Checks, per seed and case: every ticket's weights and masks bit-identical to the
   reference; the record complete (config.yaml, every summary.json with all its steps,
   W&B run files); images counted once per step at every resume; for EDST, every sample
   read once per epoch at either world size (`sample_accounting`). Prints a table per
   seed: case, fault, step, how it was detected, seconds to recover, steps redone.

Needs root for the tmpfs (without it the disk fault is skipped and says so). Minutes: the
two references, then about 8 per seed on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER = REPO / "launch" / "local_cluster.py"
CHECKPOINT_EVERY = 9
COMMON = [
    f"train.checkpoint_every_steps={CHECKPOINT_EVERY}",
    "train.keep_checkpoints=2",
    "ray.max_failures=8",  # the faults each cost one restart
    "data.verify=size",
    "tracking.wandb=offline",
]


@dataclass(frozen=True)
class Case:
    name: str
    config: str
    overrides: list[str]
    global_batch: int
    steps_per_epoch: int
    epochs: int
    exploration_steps: int  # EDST: the steps of the exploration; 0 otherwise
    elastic: bool = False  # train.num_workers=[1, 2]: the node fault and sample accounting

    @property
    def total_steps(self) -> int:  # of the run, or of each member
        return self.epochs * self.steps_per_epoch


EDST = Case(
    name="edst",
    config="configs/demo_edst.yaml",
    overrides=[
        "ensemble.num_members=2",
        "ensemble.edst.exploration_epochs=1",
        "ensemble.edst.refinement_epochs=3",
        # Elastic with a fixed global batch: the order, augmentation and BatchNorm
        # statistics of a step do not depend on the world size (pipeline._ElasticSource).
        "train.num_workers=[1,2]",
        "train.global_batch_size=128",
        "ray.resize_interval_s=5",
    ],
    global_batch=128,
    steps_per_epoch=27,  # 3,500 digits / 128
    epochs=7,  # 1 exploration epoch + 2 members x 3 refinement epochs
    exploration_steps=27,
    elastic=True,
)
EDST_FSDP2 = Case(
    name="edst-fsdp2",
    config="configs/demo_edst.yaml",
    overrides=[
        "ensemble.num_members=2",
        "ensemble.edst.exploration_epochs=1",
        "ensemble.edst.refinement_epochs=3",
        # Sharded: each of the 2 workers holds half of every parameter, mask and optimizer
        # state; checkpoints are torch.distributed.checkpoint shards, one file per rank.
        "train.strategy=fsdp2",
        "train.num_workers=2",
    ],
    global_batch=128,
    steps_per_epoch=27,
    epochs=7,
    exploration_steps=27,
)
DST_ENSEMBLE = Case(
    name="dst-ensemble",
    config="configs/demo_dst.yaml",
    overrides=[
        "ensemble.method=dst_ensemble",
        "ensemble.num_members=2",
        "train.num_workers=1",
        "train.epochs=2",
    ],
    global_batch=64,
    steps_per_epoch=54,  # 3,500 digits / 64
    epochs=2,
    exploration_steps=0,
)
CASES = {case.name: case for case in (EDST, EDST_FSDP2, DST_ENSEMBLE)}

# Fault kinds: the fault point that stops rank 0, and what is done to it there.
KILL_AFTER_CHECKPOINT = "SIGKILL rank 0 after a checkpoint of the exploration"
KILL_IN_WRITE = "SIGKILL rank 0 in a checkpoint write"
RESIZE = "kill rank 0's node: 2 -> 1 worker, back to 2 when it returns"
DRIVER = "SIGKILL the job driver, damage the newest checkpoint, re-submit"
DISK = "fill the disk until a checkpoint write fails, free it, re-submit"
MEMBER_IN_WRITE = "SIGKILL a member's rank 0 in a checkpoint write"
MEMBERS_DRIVER = "SIGKILL the job driver during the members, re-submit"
POINT = {
    KILL_AFTER_CHECKPOINT: "checkpoint-saved",
    KILL_IN_WRITE: "checkpoint-write",
    RESIZE: "checkpoint-saved",
    DRIVER: "checkpoint-saved",
    DISK: "checkpoint-saved",
    MEMBER_IN_WRITE: "checkpoint-write",
    MEMBERS_DRIVER: "checkpoint-saved",
}


@dataclass
class Fault:
    name: str
    at_step: int  # armed for the first checkpoint at or after this step
    step: int = -1  # the checkpoint step it fired at
    detected: str = ""
    injected_s: float = 0.0
    resumed_s: float = 0.0
    resumed_step: int = -1
    notes: list[str] = field(default_factory=list)


def schedule(case: Case, rng: random.Random, disk: bool) -> list[Fault]:
    """The case's faults in a seeded order at seeded checkpoint steps, ``gap`` apart: EDST's
    first during the exploration, the others after it and before the last epoch."""
    if case.exploration_steps:
        later = [KILL_IN_WRITE, RESIZE, DRIVER, DISK]
        if not case.elastic:  # a fixed world size: no resize; the disk fault is EDST's
            later = [KILL_IN_WRITE, DRIVER]
        elif not disk:
            later.remove(DISK)
        rng.shuffle(later)
        first = rng.choice(range(CHECKPOINT_EVERY, case.exploration_steps, CHECKPOINT_EVERY))
        steps = spaced_steps(rng, len(later), case.exploration_steps, case, gap=3)
        return [Fault(KILL_AFTER_CHECKPOINT, first)] + [
            Fault(name, step) for name, step in zip(later, steps, strict=True)
        ]
    names = [MEMBER_IN_WRITE, MEMBERS_DRIVER]
    rng.shuffle(names)
    # From the second checkpoint: a kill in the first one's write leaves no checkpoint, and
    # the member starts afresh (no resume line to wait for).
    steps = spaced_steps(rng, len(names), 2 * CHECKPOINT_EVERY, case, gap=2)
    return [Fault(name, step) for name, step in zip(names, steps, strict=True)]


def spaced_steps(rng: random.Random, count: int, start: int, case: Case, gap: int) -> list[int]:
    """``count`` sorted checkpoint steps in [start, the last epoch), ``gap`` checkpoints
    apart (room for each fault to recover before the next is armed)."""
    candidates = range(start, case.total_steps - case.steps_per_epoch, CHECKPOINT_EVERY)
    while True:
        steps = sorted(rng.sample(candidates, count))
        if all(b - a >= gap * CHECKPOINT_EVERY for a, b in zip(steps, steps[1:], strict=False)):
            return steps


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, text=True, **kwargs)


def cluster(root: Path, *args: str) -> None:
    run([sys.executable, str(CLUSTER), *args, "--dir", str(root)], stdout=subprocess.DEVNULL)


def cluster_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_API"))}
    for line in (root / "cluster.env").read_text().splitlines():
        if line.startswith("export "):
            key, value = line.removeprefix("export ").split("#")[0].strip().split("=", 1)
            env[key] = value
    env["WANDB_SILENT"] = "true"
    return env


def cluster_pids(root: Path, word: bytes) -> list[int]:
    """Pids of this cluster's processes whose command line holds ``word``."""
    marker = f"FT_DIST_LOCAL_CLUSTER={root}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (
                marker in (proc / "environ").read_bytes()
                and word in (proc / "cmdline").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def node_of(pid: int) -> int:
    """The local cluster's node index of a process (0 = the head)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next((v for v in environ if v.startswith(b"FT_DIST_LOCAL_NODE=")), b"=0")
    return int(value.split(b"=", 1)[1])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of the run (EDST) or of every member (DST Ensemble)."""
    return [p for p in run_dir.glob("**/checkpoints/*") if p.name.isdigit()]


class Submission:
    """One `launch/submit.sh` of a case's config, its output appended to a log file."""

    def __init__(self, root: Path, case: Case, name: str, env: dict[str, str]) -> None:
        out, data = root / "runs", root / "data"
        command = [
            str(REPO / "launch" / "submit.sh"),
            case.config,
            f"data.root={data}",
            f"train.output_dir={out}",
            f"train.run_name={name}",
            f"tracking.dir={out / name / 'wandb_files'}",
            *COMMON,
            *case.overrides,
        ]
        self.log = root / f"{name}.log"
        self.stream = open(self.log, "a")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**cluster_env(root), **env, "PATH": f"{BIN}:{os.environ['PATH']}"},
            stdout=self.stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 2400) -> int:
        code = self.process.wait(timeout=timeout)
        self.stream.close()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition, what: str, timeout: float = 900, poll: float = 0.3, alive=None) -> None:
    """Poll ``condition``; ``alive`` (optional): False once waiting longer is pointless."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos: waited {timeout:.0f} s for {what}")
        if alive is not None and not alive() and not condition():
            raise RuntimeError(f"chaos: the run ended before {what}")
        time.sleep(poll)


RESUMED = (
    r"(?:pid=(\d+)\D[^\n]*?)?resumed from (\S+): epoch \d+, step (\d+) of \d+, "
    r"(\d+) images seen, on (\d+) worker"
)
# (checkpoint, step, images seen, workers, pid of the worker that printed it or 0)
Resume = tuple[str, int, int, int, int]


def resumes(log: Path, of: Path | None = None) -> list[Resume]:
    """Every resume the log reports; ``of``: only those of the run (or member) whose
    checkpoints are in that directory."""
    found = re.findall(RESUMED, log_text(log))
    return [
        (path, int(step), int(seen), int(workers), int(pid or 0))
        for pid, path, step, seen, workers in found
        if of is None or Path(path).parent == of
    ]


def new_resumes(log: Path, of: Path, seen: list[Resume]) -> list[Resume]:
    """Resumes of ``of``'s run not among ``seen``. A line is told by its worker's pid too:
    a restarted node's log monitor delivers its workers' old lines again (same pid), while
    two faults may resume from the same checkpoint (equal text, another worker)."""
    return [line for line in resumes(log, of) if line not in seen]


def flip_middle_bytes(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.seek(size // 2)
        data = stream.read(8)
        stream.seek(size // 2)
        stream.write(bytes(b ^ 0xFF for b in data))


def mount_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def faulted_run(root: Path, case: Case, name: str, faults: list[Fault]) -> Path:
    """The case's config under ``name`` through ``faults``; returns its run directory."""
    points = root / f"points-{name}"
    points.mkdir()
    env = {"FT_DIST_FAILPOINTS": str(points)}
    run_dir, log = root / "runs" / name, root / f"{name}.log"  # every submission's
    submission: Submission | None = None
    for fault in faults:
        point = POINT[fault.name]
        (points / f"{point}@{fault.at_step}").touch()
        if submission is None:
            submission = Submission(root, case, name, env)
        fired = points / f"{point}@{fault.at_step}.fired"
        wait_until(
            lambda f=fired: f.exists() and f.read_text(),
            f"{point} at step >= {fault.at_step} ({fault.name})",
            alive=submission.running,
        )
        stopped = json.loads(fired.read_text())
        fault.step, fault.injected_s = stopped["step"], time.monotonic()
        where = Path(stopped["directory"]).parent  # the checkpoints of the run/member stopped
        seen = resumes(log, where)

        def resumed(w: Path = where, s: list = seen) -> list[Resume]:
            return new_resumes(log, w, s)

        if fault.name in (KILL_AFTER_CHECKPOINT, KILL_IN_WRITE, MEMBER_IN_WRITE):
            kill(stopped["pid"])
            wait_until(resumed, "the resume")
            fault.detected = "Ray: a worker died; fit() restarts the group from disk"
            if point == "checkpoint-write":
                fault.detected += f"; {Path(stopped['directory']).name} unpublished, skipped"
        elif fault.name == RESIZE:
            node = node_of(stopped["pid"])
            cluster(root, "kill-node", "--index", str(node))
            wait_until(resumed, "the resume on 1 worker")
            shrunk = resumed()[0]
            # Hold the 1-worker run at its next checkpoint until it has grown back (a node
            # takes longer to start than the rest of this small run takes to train).
            hold = points / "checkpoint-saved"
            hold.touch()
            wait_until(
                lambda h=hold: h.with_name(f"{h.name}.fired").exists() and not h.exists(),
                "the 1-worker run's next checkpoint",
                alive=submission.running,
            )
            cluster(root, "start-node", "--index", str(node))
            wait_until(
                lambda r=resumed: any(x[3] == 2 for x in r()), "the run to grow back to 2 workers"
            )
            hold.with_name(f"{hold.name}.fired").unlink(missing_ok=True)
            back = next(r for r in resumed() if r[3] == 2)
            fault.notes.append(
                f"node {node}; on {shrunk[3]} worker from step {shrunk[1]}, "
                f"on 2 again from step {back[1]}"
            )
            fault.detected = "Ray: node lost; fit() restarts on 1 worker, grows back"
        elif fault.name in (DRIVER, MEMBERS_DRIVER):
            for pid in cluster_pids(root, b"ft-dist"):
                kill(pid)
            submission.kill()
            time.sleep(5)  # the job's workers go with their driver
            fired.unlink(missing_ok=True)
            if fault.name == DRIVER:
                newest = max(checkpoint_dirs(run_dir), key=lambda p: int(p.name))
                # The sharded state when there is one (fsdp2: a rank's DCP file), else the
                # replicated state.
                damaged = max(newest.glob("*.distcp"), default=newest / "state.pt")
                flip_middle_bytes(damaged)
                fault.notes.append(f"damaged {newest.name}/{damaged.name}")
                fault.detected = (
                    f"sha256 of {damaged.name} vs index.json; fell back to the previous"
                )
            else:
                fault.detected = "the members resume from their own newest checkpoints"
            submission = Submission(root, case, name, env)
            wait_until(resumed, "the resume")
        elif fault.name == DISK:
            filler = root / "runs" / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
            fired.unlink()  # go on: the next checkpoint write finds the disk full
            code = submission.wait()
            fault.notes.append(f"job exit {code}")
            fault.detected = "the next write (checkpoint or run record) fails: one line, no retry"
            filler.unlink()
            submission = Submission(root, case, name, env)
            wait_until(resumed, "the resume")
        # The recovery is the stopped run's first resume since (a grow-back comes later).
        fault.resumed_s = time.monotonic()
        fault.resumed_step = min(r[1] for r in resumed())
    assert submission is not None
    code = submission.wait()
    if code != 0:
        raise RuntimeError(f"chaos: the last submission failed ({code}); see {submission.log}")
    return run_dir


def summaries(run_dir: Path) -> list[Path]:
    """The summary.json of the run (EDST) or of each member (DST Ensemble)."""
    members = sorted(run_dir.glob("members/member_*/summary.json"))
    return members or [run_dir / "summary.json"]


def compare(case: Case, reference: Path, chaos: Path) -> list[str]:
    """Problems (none: bit-identical tickets and a complete record)."""
    import torch

    problems = []
    tickets = sorted(p.relative_to(reference) for p in reference.glob("**/tickets/ticket_*.pt"))
    if not tickets:
        problems.append("the reference wrote no tickets")
    if tickets != sorted(p.relative_to(chaos) for p in chaos.glob("**/tickets/ticket_*.pt")):
        problems.append("the runs wrote different tickets")
    for name in tickets:
        a = torch.load(reference / name, weights_only=True)
        b = torch.load(chaos / name, weights_only=True)
        for part in ("model", "masks"):
            for key, tensor in a[part].items():
                if not torch.equal(tensor, b[part][key]):
                    problems.append(f"{name}: {part}.{key} differs")
    for path in summaries(chaos):
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if summary.get("steps") != case.total_steps:
            problems.append(f"{path}: {summary.get('steps')} steps, not {case.total_steps}")
        if summary.get("images_seen") != case.total_steps * case.global_batch:
            problems.append(f"{path}: {summary.get('images_seen')} images seen")
    if not (chaos / "config.yaml").is_file():
        problems.append("config.yaml missing")
    if not list(chaos.rglob("run-*.wandb")):
        problems.append("no W&B run files")
    return problems


def resume_accounting(case: Case, log: Path) -> list[str]:
    """Images counted once per step: at every resume, images seen = step x global batch."""
    return [
        f"resumed {path} at step {step} with {seen} images seen"
        for path, step, seen, _, _ in resumes(log)
        if seen != step * case.global_batch
    ]


def sample_accounting(run: Path) -> list[str]:
    """EDST: every sample read once per epoch, at world size 1 and 2 alike.

    The order the stream reads, from its own code (``_ElasticSource.raw_batches``, the
    run's config.yaml and data): for every epoch, at world size 1 and 2, step k takes the
    same samples, and no sample is taken twice in the epoch; so the steps of any chain of
    resumes, on either world size, read each sample of the epoch once.
    """
    from ft_dist.config import load_config
    from ft_dist.data.pipeline import TrainStream, _ElasticSource
    from ft_dist.utils import derive_seed

    problems = []
    cfg = load_config(run / "config.yaml")
    seed = derive_seed("data", cfg.data.seed, cfg.train.seed, cfg.train.member)
    for epoch in range(EDST.epochs):
        orders = {}
        for world_size in (1, 2):
            steps: dict[int, list[tuple[str, str]]] = {}
            for rank in range(world_size):
                stream = TrainStream(
                    cfg.data, rank=rank, world_size=world_size, seed=seed,
                    global_batch=EDST.global_batch,
                )  # fmt: skip
                source = _ElasticSource(stream, epoch, 0)
                for index, items in source.raw_batches(0):
                    keys = [(url, key) for url, key, _ in items]
                    steps.setdefault(index // source.accum, []).extend(keys)
            orders[world_size] = {k: sorted(v) for k, v in steps.items()}
        one, two = orders[1], orders[2]
        if one != two:
            problems.append(f"epoch {epoch}: world sizes 1 and 2 take different samples")
        taken = [key for step in sorted(two) for key in two[step]]
        expected = EDST.steps_per_epoch * EDST.global_batch
        if len(two) != EDST.steps_per_epoch or len(taken) != expected:
            problems.append(f"epoch {epoch}: {len(two)} steps, {len(taken)} samples")
        if len(set(taken)) != len(taken):
            problems.append(f"epoch {epoch}: {len(taken) - len(set(taken))} samples twice")
    return problems


def table(rows: list[tuple[str, Fault]]) -> str:
    lines = [
        "| case | fault | at checkpoint step | how it was detected | time to recover (s) | "
        "steps redone |",
        "|---|---|---|---|---|---|",
    ]
    for case, f in rows:
        note = f" ({'; '.join(f.notes)})" if f.notes else ""
        seconds = f.resumed_s - f.injected_s
        lines.append(
            f"| {case} | {f.name}{note} | {f.step} | {f.detected} | {seconds:.0f} | "
            f"{max(0, f.step - f.resumed_step)} (resumed at step {f.resumed_step}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fault schedules")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ftchaos"))
    parser.add_argument("--keep", action="store_true", help="keep the runs and logs")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run([str(BIN / "ft-dist"), "shards", "mnist", "--out", str(root / "data")],
        stdout=subprocess.DEVNULL)  # fmt: skip
    cluster(root, "up", "--worker-nodes", "2", "--worker-cpus", "1", "--head-cpus", "0")
    out = root / "runs"
    disk = mount_tmpfs(out, 256)
    failed = False
    try:
        cases = [CASES[name] for name in args.cases]
        for case in cases:
            started = time.monotonic()
            reference = Submission(root, case, f"reference-{case.name}", {})
            if reference.wait() != 0:
                raise RuntimeError(f"chaos: the {case.name} reference failed; see {reference.log}")
            print(f"reference {case.name}: {time.monotonic() - started:.0f} s", flush=True)
        for seed in args.seeds:
            rng, rows, problems = random.Random(seed), [], []
            for case in cases:
                name = f"chaos-{case.name}-{seed}"
                faults = schedule(case, rng, disk)
                chaos = faulted_run(root, case, name, faults)
                rows += [(case.name, fault) for fault in faults]
                found = compare(case, out / f"reference-{case.name}", chaos)
                found += resume_accounting(case, root / f"{name}.log")
                if case.elastic:
                    found += sample_accounting(chaos)
                problems += [f"{case.name}: {problem}" for problem in found]
                shutil.rmtree(chaos / "checkpoints", ignore_errors=True)  # tmpfs room
                for member in chaos.glob("members/*/checkpoints"):
                    shutil.rmtree(member, ignore_errors=True)
            print(f"\nseed {seed}:\n{table(rows)}")
            if not disk:
                print("fill the disk: skipped (mounting a tmpfs needs root)")
            for problem in problems:
                print(f"chaos: {problem}")
            failed |= bool(problems)
            print(f"chaos: seed {seed}: " + ("FAILED" if problems else
                  "tickets (weights and masks) bit-identical to the uninterrupted runs; "
                  "every image counted once; config.yaml, summary.json and the W&B runs "
                  "complete"), flush=True)  # fmt: skip
        return 1 if failed else 0
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster(root, "down")
        if disk:
            subprocess.run(["umount", str(out)], capture_output=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
