"""`make chaos`: one EDST run on the local multi-node cluster through a seeded schedule of
faults, checked bit-identical against an uninterrupted run of the same config.

    python launch/chaos.py [--seed 0] [--dir /tmp/ftchaos] [--keep]

1. a local cluster (launch/local_cluster.py: head + 2 worker nodes, 1 CPU each, token auth)
   and the bundled MNIST digits as shards;
2. the reference: the config submitted once (`launch/submit.sh`), uninterrupted;
3. the same config under another run name, with these faults at seeded checkpoint steps
   (FAULT_GAP apart, each at a checkpoint written after the previous fault recovered):
   SIGKILL a Ray Train worker; kill a worker node (started again once the run resumed);
   SIGKILL the job driver, damage the newest checkpoint, re-submit; fill the run's disk (a
   tmpfs of its own) until a checkpoint write fails, free it, re-submit;
4. checks: every ticket's weights and masks bit-identical to the reference, the run's
   record complete (config.yaml, summary.json with all steps, the W&B run's files), every
   sample counted once per epoch (`sample_accounting`), the faults at distinct checkpoints;
   prints a table: fault, when (step), how it was detected, seconds to recover, steps lost.

Needs root for the tmpfs (without it the disk fault is skipped and says so). Minutes: on a
2-core machine shared with other work, about 7.
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
STEPS_PER_EPOCH = 27  # 3,500 digits / global batch 128
GLOBAL_BATCH = 128
CHECKPOINT_EVERY = 9
EPOCHS = 7  # 1 exploration epoch + 2 members x 3 refinement epochs
OVERRIDES = [
    "ensemble.num_members=2",
    "ensemble.edst.exploration_epochs=1",
    "ensemble.edst.refinement_epochs=3",
    # A fixed global batch: the training stream's elastic order (pipeline._ElasticSource),
    # world-size independent, each sample read at most once per epoch.
    f"train.global_batch_size={GLOBAL_BATCH}",
    f"train.checkpoint_every_steps={CHECKPOINT_EVERY}",
    "train.keep_checkpoints=2",
    "data.verify=size",
    "tracking.wandb=offline",
]
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
# Faults at seeded checkpoint steps at least this far apart, none in the first or last
# epoch; each is injected at a checkpoint written after the previous one had recovered.
FAULT_GAP = 4 * CHECKPOINT_EVERY


@dataclass
class Fault:
    name: str
    at_step: int  # injected once a checkpoint at or after this step exists
    step: int = -1  # the newest complete checkpoint when it was injected
    reached: int = -1  # the last step the progress lines had reported then
    detected: str = ""
    injected_s: float = 0.0
    resumed_s: float = 0.0
    resumed_step: int = -1
    notes: list[str] = field(default_factory=list)


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


def newest_step(run_dir: Path) -> int:
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=-1)


class Submission:
    """One `launch/submit.sh` of the config, its output in a log file read as it grows."""

    def __init__(self, root: Path, name: str, out: Path, data: Path, log: Path) -> None:
        command = [
            str(REPO / "launch" / "submit.sh"),
            "configs/demo_edst.yaml",
            f"data.root={data}",
            f"train.output_dir={out}",
            f"train.run_name={name}",
            f"tracking.dir={out / name / 'wandb_files'}",
            *OVERRIDES,
        ]
        self.log = log
        self.stream = open(log, "a")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**cluster_env(root), "PATH": f"{BIN}:{os.environ['PATH']}"},
            stdout=self.stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 1800) -> int:
        code = self.process.wait(timeout=timeout)
        self.stream.close()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition, what: str, timeout: float = 900, poll: float = 0.5, alive=None) -> None:
    """Poll ``condition``; ``alive`` (optional): False once waiting longer is pointless."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos: waited {timeout:.0f} s for {what}")
        if alive is not None and not alive() and not condition():
            raise RuntimeError(f"chaos: the run ended before {what}")
        time.sleep(poll)


RESUMED = r"resumed from \S+: epoch \d+, step (\d+) of \d+, (\d+) images seen"


def resumes(log: Path) -> list[int]:
    return [int(s) for s, _ in re.findall(RESUMED, log_text(log))]


def fault_steps(rng: random.Random, count: int) -> list[int]:
    """``count`` seeded checkpoint steps, FAULT_GAP apart, past the first epoch and before
    the last."""
    candidates = range(STEPS_PER_EPOCH, TOTAL_STEPS - STEPS_PER_EPOCH, CHECKPOINT_EVERY)
    while True:
        steps = sorted(rng.sample(candidates, count))
        if all(b - a >= FAULT_GAP for a, b in zip(steps, steps[1:], strict=False)):
            return steps


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


def chaos_run(root: Path, data: Path, out: Path, faults: list[Fault], disk: bool) -> Path:
    """The faulted run; returns its run directory."""
    name, log = "chaos", root / "chaos.log"
    run_dir = out / name
    submission = Submission(root, name, out, data, log)
    recovered = -1  # the newest checkpoint once the previous fault had recovered
    for fault in faults:
        # Not before its seeded step, and at a checkpoint written after the previous fault
        # had recovered (a node restart takes a while; the run goes on meanwhile).
        target = max(fault.at_step, recovered + CHECKPOINT_EVERY)
        wait_until(
            lambda t=target: newest_step(run_dir) >= t,
            f"the checkpoint at step {target} ({fault.name})",
            alive=lambda s=submission: s.running(),
        )
        fault.step, fault.injected_s = newest_step(run_dir), time.monotonic()
        fault.reached = max(map(int, re.findall(r"\| step (\d+)/", log_text(log))), default=-1)
        before = len(resumes(log))
        if fault.name == "SIGKILL a Ray Train worker":
            pid = cluster_pids(root, b"RayTrainWorker")[0]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: "the worker group failed" in log_text(log), "the restart")
            fault.detected = "Ray: worker died; fit() restarts the group"
        elif fault.name == "kill a worker node":
            node = next(n for n in map(node_of, cluster_pids(root, b"RayTrainWorker")) if n)
            cluster(root, "kill-node", "--index", str(node))
            wait_until(lambda b=before: len(resumes(log)) > b, "the resume", timeout=900)
            fault.detected = "Ray: node lost; fit() restarts on the nodes left"
            cluster(root, "start-node", "--index", str(node))
            fault.notes.append(f"node {node}, started again after the resume")
        elif fault.name == "SIGKILL the job driver, damage the newest checkpoint":
            for pid in cluster_pids(root, b"ft-dist"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            submission.kill()
            newest = run_dir / "checkpoints" / f"{newest_step(run_dir):09d}"
            flip_middle_bytes(newest / "state.pt")
            fault.notes.append(f"damaged {newest.name}/state.pt")
            time.sleep(5)  # the job's workers go with their driver
            submission = Submission(root, name, out, data, log)
            fault.detected = "sha256 of state.pt vs index.json; fell back to the previous"
        elif fault.name == "fill the disk, free it":
            filler = out / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
            code = submission.wait()
            fault.notes.append(f"job exit {code}")
            fault.detected = "checkpoint write: 'no space left on ...' (one line, no retry)"
            filler.unlink()
            submission = Submission(root, name, out, data, log)
        wait_until(lambda b=before: len(resumes(log)) > b, "the resume", timeout=900)
        # Ray delivers workers' lines late and out of order: the newest resume is the max.
        fault.resumed_s, fault.resumed_step = time.monotonic(), max(resumes(log)[before:])
        recovered = newest_step(run_dir)
    code = submission.wait()
    if code != 0:
        raise RuntimeError(f"chaos: the last submission failed ({code}); see {log}")
    return run_dir


def sample_accounting(run: Path, log: Path) -> list[str]:
    """Every sample counted once per epoch: problems (none: all checked).

    1. The loop's own count: ``images_seen`` (checkpointed, +global batch per optimizer
       step) at every resume equals the resumed step x the global batch, and at the end
       (summary.json) all steps x the global batch: no step counted twice or skipped.
    2. The order the stream reads, from its own code (``_ElasticSource.raw_batches``, the
       run's config.yaml and data): for every epoch, at world size 1 and 2, step k takes
       the same samples, and no sample is taken twice in the epoch; so the steps of any
       chain of resumes, on either world size, read each sample of the epoch once.
    """
    from ft_dist.config import load_config
    from ft_dist.data.pipeline import TrainStream, _ElasticSource
    from ft_dist.utils import derive_seed

    problems = []
    for step, seen in re.findall(RESUMED, log_text(log)):
        if int(seen) != int(step) * GLOBAL_BATCH:
            problems.append(f"resumed at step {step} with {seen} images seen")
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("images_seen") != TOTAL_STEPS * GLOBAL_BATCH:
        problems.append(f"summary.json: {summary.get('images_seen')} images seen, not "
                        f"{TOTAL_STEPS} x {GLOBAL_BATCH}")  # fmt: skip
    cfg = load_config(run / "config.yaml")
    seed = derive_seed("data", cfg.data.seed, cfg.train.seed, cfg.train.member)
    for epoch in range(EPOCHS):
        orders = {}
        for world_size in (1, 2):
            steps: dict[int, list[tuple[str, str]]] = {}
            for rank in range(world_size):
                stream = TrainStream(
                    cfg.data, rank=rank, world_size=world_size, seed=seed,
                    global_batch=GLOBAL_BATCH,
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
        if len(two) != STEPS_PER_EPOCH or len(taken) != STEPS_PER_EPOCH * GLOBAL_BATCH:
            problems.append(f"epoch {epoch}: {len(two)} steps, {len(taken)} samples")
        if len(set(taken)) != len(taken):
            problems.append(f"epoch {epoch}: {len(taken) - len(set(taken))} samples twice")
    return problems


def compare(reference: Path, chaos: Path) -> list[str]:
    """Problems (none: bit-identical tickets and a complete record)."""
    import torch

    problems = []
    tickets = sorted(p.name for p in (reference / "tickets").glob("ticket_*.pt"))
    if tickets != sorted(p.name for p in (chaos / "tickets").glob("ticket_*.pt")):
        problems.append("the runs wrote different tickets")
    for name in tickets:
        a = torch.load(reference / "tickets" / name, weights_only=True)
        b = torch.load(chaos / "tickets" / name, weights_only=True)
        for part in ("model", "masks"):
            for key, tensor in a[part].items():
                if not torch.equal(tensor, b[part][key]):
                    problems.append(f"{name}: {part}.{key} differs")
    summary = json.loads((chaos / "summary.json").read_text())
    if summary.get("steps") != TOTAL_STEPS:
        problems.append(f"summary.json: {summary.get('steps')} steps, not {TOTAL_STEPS}")
    if not (chaos / "config.yaml").is_file():
        problems.append("config.yaml missing")
    if not list(chaos.rglob("run-*.wandb")):
        problems.append("no W&B run files")
    return problems


def table(faults: list[Fault]) -> str:
    lines = [
        "| fault | when (newest checkpoint / last logged step) | how it was detected | "
        "time to recover (s) | work lost (steps redone) |",
        "|---|---|---|---|---|",
    ]
    for f in faults:
        lost = max(f.reached, f.step) - f.resumed_step  # at least: progress is logged every 10
        note = f" ({'; '.join(f.notes)})" if f.notes else ""
        seconds = f.resumed_s - f.injected_s
        lines.append(
            f"| {f.name}{note} | step {f.step} / {f.reached} | {f.detected} | {seconds:.0f} | "
            f">= {lost} (resumed at step {f.resumed_step}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ftchaos"))
    parser.add_argument("--keep", action="store_true", help="keep the runs and logs")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = root / "data"
    run([str(BIN / "ft-dist"), "shards", "mnist", "--out", str(data)], stdout=subprocess.DEVNULL)
    cluster(root, "up", "--worker-nodes", "2", "--worker-cpus", "1", "--head-cpus", "1")
    out = root / "runs"
    disk = mount_tmpfs(out, 64)
    try:
        started = time.monotonic()
        reference = Submission(root, "reference", out, data, root / "reference.log")
        if reference.wait() != 0:
            raise RuntimeError(f"chaos: the reference run failed; see {root / 'reference.log'}")
        print(f"reference run: {time.monotonic() - started:.0f} s", flush=True)
        rng = random.Random(args.seed)
        names = [
            "SIGKILL a Ray Train worker",
            "kill a worker node",
            "SIGKILL the job driver, damage the newest checkpoint",
        ] + (["fill the disk, free it"] if disk else [])
        steps = fault_steps(rng, len(names))
        faults = [Fault(name, step) for name, step in zip(names, steps, strict=True)]
        chaos = chaos_run(root, data, out, faults, disk)
        print(table(faults))
        if not disk:
            print("fill the disk, free it: skipped (mounting a tmpfs needs root)")
        problems = compare(out / "reference", chaos)
        landed = [f.step for f in faults]
        if len(set(landed)) != len(landed) or max(landed) >= TOTAL_STEPS:
            problems.append(f"faults landed at checkpoints {landed}: not distinct points")
        problems += sample_accounting(chaos, root / "chaos.log")
        for problem in problems:
            print(f"chaos: {problem}")
        print("chaos: tickets (weights and masks) bit-identical to the uninterrupted run; "
              "every sample counted once per epoch; config.yaml, summary.json and the "
              "W&B run complete" if not problems else
              "chaos: FAILED")  # fmt: skip
        return 1 if problems else 0
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster(root, "down")
        if disk:
            subprocess.run(["umount", str(out)], capture_output=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
