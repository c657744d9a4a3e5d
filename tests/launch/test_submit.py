"""`ray job submit` end to end against the local multi-node cluster from launch/.

One cluster for the module: a head and one worker node of 1 CPU each, token auth on. The
demo config's 2 training workers need 1 CPU each, so they run on two different nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from ft_dist.layout import SUMMARY_FILE, ticket_path
from ft_dist.train.session import latest_complete_checkpoint
from ft_dist.train.worker import RAY_CHECKPOINTS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLUSTER = [sys.executable, str(REPO / "launch" / "local_cluster.py")]
RAY = str(Path(sys.executable).parent / "ray")


def cluster_env(cluster_dir: Path) -> dict[str, str]:
    """The client environment `cluster.env` describes (what `source cluster.env` gives)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    for line in (cluster_dir / "cluster.env").read_text().splitlines():
        match = re.match(r"export (\w+)=(\S+)", line)
        if match:
            env[match[1]] = match[2]
    env["OMP_NUM_THREADS"] = "1"
    return env


def cluster_processes(cluster_dir: Path) -> list[int]:
    """Pids that inherited the cluster's marker variable (Ray renames its workers, so their
    command lines cannot be matched)."""
    marker, pids = f"FT_DIST_LOCAL_CLUSTER={cluster_dir}\0".encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def wait_for(condition, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        time.sleep(0.2)


def registered(run: Path, step: str | None = None) -> bool:
    """Ray registered checkpoint `step` of `run` (any checkpoint when None): only then does
    it exist for a resume."""
    snapshot = run / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and f"{RAY_CHECKPOINTS}/{step or ''}" in snapshot.read_text()


@pytest.fixture(scope="module")
def cluster():
    # A short path: Ray's unix sockets live below it (107-byte limit).
    cluster_dir = Path(tempfile.mkdtemp(prefix="ftc", dir="/tmp"))
    args = ["--dir", str(cluster_dir)]
    up = [*CLUSTER, "up", *args, "--worker-nodes", "1", "--head-cpus", "1", "--worker-cpus", "1"]
    try:
        subprocess.run(up, check=True, timeout=240)
        assert len(cluster_processes(cluster_dir)) > 5  # the check below can see them
        yield cluster_dir
    finally:
        subprocess.run([*CLUSTER, "down", *args], check=True, timeout=120)
        left = cluster_processes(cluster_dir)
        assert left == [], f"cluster processes left behind: {left}"
        shutil.rmtree(cluster_dir, ignore_errors=True)  # only once nothing runs in it


def submit_demo(env: dict, data: Path, out: Path, run_name: str, *overrides: str) -> str:
    """`launch/submit.sh configs/demo_dst.yaml` for one short epoch on `data`; its output."""
    settings = [
        f"data.root={data}",
        "data.batch_size_per_worker=32",
        "data.shuffle_buffer=64",
        "data.verify=size",
        "sparsity.update_every_steps=3",
        "train.epochs=1",
        f"train.run_name={run_name}",
        f"train.output_dir={out}",
        "tracking.wandb=disabled",
        *overrides,
    ]
    submit = subprocess.run(
        [str(REPO / "launch" / "submit.sh"), "configs/demo_dst.yaml", *settings],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-4000:]
    return output


def test_cluster_rejects_clients_without_its_token(cluster: Path, tmp_path: Path):
    env = cluster_env(cluster)
    env["RAY_AUTH_MODE"] = "disabled"
    result = subprocess.run(
        [RAY, "job", "submit", "--address", env["RAY_ADDRESS"], "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Unauthorized" in result.stdout + result.stderr


def test_submitted_job_trains_across_nodes_and_prints_the_run_dir_last(
    cluster: Path, tiny_mnist: Path, tmp_path: Path
):
    env = cluster_env(cluster)
    out = tmp_path / "runs"
    output = submit_demo(env, tiny_mnist, out, "job")
    assert "[job] epoch" in output  # rank-0 progress reached the submitting terminal
    run = out / "job"
    assert (run / SUMMARY_FILE).is_file() and ticket_path(run, 1).is_file()
    job_id = re.search(r"ft-dist-[\w-]+", output)[0]  # submit.sh sets the submission id
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", env["RAY_ADDRESS"], job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert logs.strip().splitlines()[-1] == str(run)


def test_submitted_job_builds_a_user_file_builder_on_every_node(
    cluster: Path, tiny_mnist: Path, tmp_path: Path
):
    """A path/to/file.py:callable model (with nn.MultiheadAttention) trains through
    `ray job submit` with one worker on each node: the file travels inside the config."""
    out = tmp_path / "runs"
    model = ["model.name=tests/models/attention_builder.py:build", "model.kwargs={dim: 16}"]
    submit_demo(cluster_env(cluster), tiny_mnist, out, "builder-job", *model)
    run = out / "builder-job"
    ticket = torch.load(ticket_path(run, 1), weights_only=True)
    assert ticket["meta"]["model"].endswith("tests/models/attention_builder.py:build")
    assert "attention.in_proj_weight" in ticket["masks"]
    assert "source" not in yaml.safe_load((run / "config.yaml").read_text())["model"]


def job_drivers(cluster_dir: Path, run_name: str) -> list[int]:
    """Pids of the cluster's `ft-dist train ... train.run_name=RUN_NAME` job drivers."""
    drivers = []
    for pid in cluster_processes(cluster_dir):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = b"train" in argv and f"train.run_name={run_name}".encode() in argv
        if wanted and any(arg.endswith(b"ft-dist") for arg in argv):
            drivers.append(pid)
    return drivers


def test_resubmitting_after_the_job_driver_is_killed_resumes_the_run(
    cluster: Path, tiny_mnist: Path, tmp_path: Path
):
    env = cluster_env(cluster)
    out = tmp_path / "runs"
    steps = 6 * 4  # 6 epochs of 256 digits / (2 workers x 32)
    command = [
        str(REPO / "launch" / "submit.sh"),
        "configs/demo_dst.yaml",
        f"data.root={tiny_mnist}",
        "data.batch_size_per_worker=32",
        "data.shuffle_buffer=64",
        "data.verify=size",
        "train.epochs=6",
        "train.run_name=killed",
        f"train.output_dir={out}",
        "tracking.wandb=disabled",
    ]
    run = out / "killed"
    with open(tmp_path / "first.log", "w") as first_log:
        first = subprocess.Popen(command, env=env, cwd=REPO, stdout=first_log, stderr=first_log)
        try:
            wait_for(lambda: registered(run), "the job's first checkpoint", timeout_s=400)
            [driver] = job_drivers(cluster, "killed")
            os.killpg(os.getpgid(driver), signal.SIGKILL)  # the driver and its shell
            assert first.wait(timeout=120) != 0
        finally:
            first.kill()
    assert not (run / SUMMARY_FILE).exists()  # killed long before its 24 steps
    wait_for(lambda: not job_drivers(cluster, "killed"), "the killed driver to be gone", 60)
    # The newest complete checkpoint on disk (Ray may not have registered it yet).
    killed_at = int(Path(latest_complete_checkpoint(run)).name)

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    [resumed] = re.findall(r"\[killed\] resumed from \S+: epoch (\d+), step (\d+) of 24", output)
    assert int(resumed[1]) == killed_at > 0, (resumed, killed_at)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["steps"] == steps and summary["images_seen"] == steps * 64


def test_submit_script_explains_a_missing_address_or_token(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    script = str(REPO / "launch" / "submit.sh")
    no_address = subprocess.run(
        [script, "configs/demo_dst.yaml"], env=env, capture_output=True, text=True
    )
    assert no_address.returncode == 2 and "RAY_ADDRESS is not set" in no_address.stderr
    env.update(RAY_ADDRESS="http://127.0.0.1:1", RAY_AUTH_TOKEN_PATH=str(tmp_path / "none"))
    no_token = subprocess.run(
        [script, "configs/demo_dst.yaml"], env=env, capture_output=True, text=True
    )
    assert no_token.returncode == 2 and "no token was found" in no_token.stderr
