"""Losing a node of the local multi-node cluster from launch/ (its raylet and everything
on it is SIGKILLed mid-run):

* an elastic run goes on with the worker left and grows back to 2 workers when the node
  returns; it ends with the steps and samples of the plan;
* a DST Ensemble whose member loses its node still finishes every member: that member
  resumes from its checkpoint on the node left, once the other member is done with it.

Head (0 CPUs: the drivers, Tune's trials and Ray Train's controllers) + 2 worker nodes of
1 CPU: each training worker lives on its own node. Every wait is on a condition, with a
bound. One cluster for the module; the elastic test brings its node back, so the DST
Ensemble test starts with both nodes again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cloudpickle
import pytest

from ft_dist.config import save_config
from ft_dist.layout import SUMMARY_FILE, run_dir
from ft_dist.train.loop import train
from ft_dist.train.worker import fit
from tests.launch.test_submit import (
    CLUSTER,
    REPO,
    cluster_env,
    cluster_processes,
    registered,
    wait_for,
)
from tests.orchestrate.dst_ensemble_driver import BARRIER_TIMEOUT_S, PausingSession
from tests.train.conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
cloudpickle.register_pickle_by_value(sys.modules[__name__])

EPOCHS, STEPS_PER_EPOCH, GLOBAL_BATCH = 5, 4, 64  # 256 samples / (2 workers x 32)


@pytest.fixture(scope="module")
def cluster():
    cluster_dir = Path(tempfile.mkdtemp(prefix="fte", dir="/tmp"))  # short: Ray's sockets
    args = ["--dir", str(cluster_dir)]
    up = [*CLUSTER, "up", *args, "--worker-nodes", "2", "--head-cpus", "0", "--worker-cpus", "1"]
    try:
        subprocess.run(up, check=True, timeout=240)
        yield cluster_dir
    finally:
        subprocess.run([*CLUSTER, "down", *args], check=True, timeout=120)
        assert cluster_processes(cluster_dir) == []
        shutil.rmtree(cluster_dir, ignore_errors=True)


def pausing(session, flags: Path) -> PausingSession:
    """The real session, stopped after a checkpoint once per world size until the test acts:
    at 2 workers rank 1 waits to lose its node; at 1 worker, rank 0 waits for Ray to grow
    the group back (Ray stops it then)."""
    last = session.rank == session.world_size - 1
    return PausingSession(session, flags / f"paused_{session.world_size}" if last else None)


def pausing_loop(flags: Path):
    def loop(cfg, session, tracker):
        with open(flags / "starts.txt", "a") as starts:
            starts.write(f"{session.world_size}:{session.rank}\n")
        return train(cfg, pausing(session, flags), tracker)

    return loop


def node_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"FT_DIST_LOCAL_NODE=")).split(b"=")[1])


def lose_and_return_a_node(cluster: Path, flags: Path, run: Path, log: list) -> None:
    """Kill the node of the paused rank once Ray registered that checkpoint; start it again
    once the run goes on (and checkpoints) with 1 worker."""
    try:
        wait_for(lambda: (flags / "paused_2").exists(), "a checkpoint at 2 workers")
        paused = json.loads((flags / "paused_2").read_text())
        wait_for(lambda: registered(run, paused["step"]), "Ray to register it")
        node = node_of(paused["pid"])
        kill = [*CLUSTER, "kill-node", "--dir", str(cluster), "--index", str(node)]
        subprocess.run(kill, check=True, timeout=60)
        log.append(("killed", node, paused["step"]))
        wait_for(lambda: (flags / "paused_1").exists(), "a checkpoint at 1 worker")
        start = [*CLUSTER, "start-node", "--dir", str(cluster), "--index", str(node)]
        subprocess.run(start, check=True, timeout=180)
        log.append(("returned", node, json.loads((flags / "paused_1").read_text())["step"]))
    except Exception as error:  # reported by the test, which checks the log
        log.append(("error", repr(error)))


def elastic_config(root: Path, out: Path, address: str | None = None):
    return tiny_config(
        root,
        out,
        train={"epochs": EPOCHS, "num_workers": [1, 2], "run_name": "elastic"},
        ray={"max_failures": 3, "resize_interval_s": 2.0, "address": address},
        optim={"base_batch_size": 32},
    )


def drive(root: str, out: str, flags: str, address: str) -> None:
    """The driver, run as its own process: Ray reads the cluster's token settings from the
    environment a process starts with."""
    fit(elastic_config(Path(root), Path(out), address), pausing_loop(Path(flags)))


def test_lost_node_shrinks_the_run_and_its_return_grows_it(
    cluster: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    flags, out = tmp_path / "flags", tmp_path / "runs"
    flags.mkdir()
    run, log = run_dir(elastic_config(tiny_mnist, out).train), []
    events = threading.Thread(
        target=lose_and_return_a_node, args=(cluster, flags, run, log), daemon=True
    )
    events.start()
    env = cluster_env(cluster)
    address = env.pop("RAY_GCS_ADDRESS")
    env.pop("RAY_ADDRESS")  # the dashboard's (job submission)
    code = f"from {__name__} import drive; drive(*{[str(tiny_mnist), str(out), str(flags), address]!r})"
    with open(tmp_path / "driver.log", "w") as driver_log:
        driver = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=REPO,
            stdout=driver_log,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    events.join(timeout=10)
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-4000:]
    assert [entry[0] for entry in log] == ["killed", "returned"], log
    starts = (flags / "starts.txt").read_text().split()
    assert starts[:2] in (["2:0", "2:1"], ["2:1", "2:0"]) and starts[2] == "1:0", starts
    assert sorted(starts[3:]) == ["2:0", "2:1"], starts  # grown back to 2 workers
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == EPOCHS
    assert summary["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert summary["images_seen"] == EPOCHS * STEPS_PER_EPOCH * GLOBAL_BATCH
    # The checkpoints of each world size resumed where the other stopped.
    assert int(log[0][2]) < int(log[1][2]) < EPOCHS * STEPS_PER_EPOCH


def lose_member_2s_node(cluster: Path, flags: Path, member_2: Path, log: list) -> None:
    """Once both members paused at a checkpoint and Ray registered member 2's, kill member
    2's node (never member 1's: each holds one node's only CPU) and let member 1 go on."""
    try:
        for member in (1, 2):
            wait_for(lambda m=member: (flags / f"paused_{m}").exists(), f"member {member}")
        paused = {m: json.loads((flags / f"paused_{m}").read_text()) for m in (1, 2)}
        wait_for(lambda: registered(member_2, paused[2]["step"]), "Ray to register it")
        node = node_of(paused[2]["pid"])
        assert node != node_of(paused[1]["pid"]), "both members on one node"
        kill = [*CLUSTER, "kill-node", "--dir", str(cluster), "--index", str(node)]
        subprocess.run(kill, check=True, timeout=60)
        log.append(("killed", node, paused[2]["step"]))
    except Exception as error:  # reported by the test, which checks the log
        log.append(("error", repr(error)))
    finally:
        (flags / "node_lost").touch()  # never leave member 1 waiting


def test_dst_ensemble_member_that_loses_its_node_resumes_and_all_finish(
    cluster: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    epochs, steps_per_member = 3, 3 * 8  # 256 samples / 32 per step on 1 worker
    wait_for(lambda: alive_nodes(cluster) == 3, "head and both worker nodes", BARRIER_TIMEOUT_S)
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "runs",
        train={
            "epochs": epochs,
            "run_name": "dst_ensemble",
            "num_workers": 1,
            "checkpoint_every_steps": 4,
        },
        ray={"max_failures": 2},
        ensemble={"method": "dst_ensemble", "num_members": 2},
    )
    exp_dir = run_dir(cfg.train)
    flags, log = exp_dir / "flags", []
    flags.mkdir(parents=True)
    config = save_config(cfg, tmp_path / "pdst.yaml")
    members = [exp_dir / "members" / f"member_{m}" for m in (1, 2)]
    events = threading.Thread(
        target=lose_member_2s_node, args=(cluster, flags, members[1], log), daemon=True
    )
    events.start()
    driver = subprocess.run(
        [sys.executable, "-m", "tests.orchestrate.dst_ensemble_driver", str(config), "lose_node"],
        env=cluster_env(cluster),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    events.join(timeout=10)
    assert driver.returncode == 0, (driver.stdout + driver.stderr)[-4000:]
    assert [entry[0] for entry in log] == ["killed"], log
    outcomes = json.loads(driver.stdout.strip().splitlines()[-1])
    assert outcomes == [{"member": 1, "error": None}, {"member": 2, "error": None}]
    starts = (flags / "starts.txt").read_text().split()
    # Each member started once from scratch; member 2 once more, from its checkpoint.
    assert sorted(starts[:2]) == ["1:0", "2:0"] and starts[2:] == [f"2:{log[0][2]}"], starts
    for member in members:
        summary = json.loads((member / SUMMARY_FILE).read_text())
        assert summary["epochs"] == epochs and summary["steps"] == steps_per_member
        assert summary["images_seen"] == steps_per_member * 32
        assert summary["tickets"] == ["tickets/ticket_01.pt"]
        assert (member / "tickets" / "ticket_01.pt").is_file()


def alive_nodes(cluster: Path) -> int:
    """ALIVE nodes, head included, as the cluster's dashboard counts them."""
    status = [*CLUSTER, "status", "--dir", str(cluster)]
    output = subprocess.run(status, check=True, timeout=60, capture_output=True, text=True)
    return int(output.stdout.split()[0])
